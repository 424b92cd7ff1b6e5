"""Rewrite the README's block under every `$ regl report --json FILE` with what that command prints now.

    python experiments/refresh_readme.py        # after committing a new export under experiments/results/

tests/test_report.py checks that the README shows exactly this output; this is the one way to make it so.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(```\n\$ (regl report --json (\S+))\n)(.*?)(```)", re.S)


def main() -> int:
    readme = ROOT / "README.md"

    def refreshed(match: re.Match) -> str:
        out = subprocess.run([sys.executable, "-m", "regl.cli", "report", "--json", match.group(3)],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout
        return match.group(1) + out + match.group(5)

    text = readme.read_text()
    new = BLOCK.sub(refreshed, text)
    if new != text:
        readme.write_text(new)
        print("README.md: report blocks rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
