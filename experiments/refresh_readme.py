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


def report_blocks(text: str) -> list[tuple[str, str, str]]:
    """(command, FILE, the block shown under it) for every `$ regl report --json FILE` in ``text``."""
    return [(m.group(2), m.group(3), m.group(4)) for m in BLOCK.finditer(text)]


def report_output(path: str) -> str:
    """What `regl report --json PATH` prints, run from the repository root."""
    return subprocess.run([sys.executable, "-m", "regl.cli", "report", "--json", path],
                          capture_output=True, text=True, check=True, cwd=ROOT).stdout


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = BLOCK.sub(lambda m: m.group(1) + report_output(m.group(3)) + m.group(5), text)
    if new != text:
        readme.write_text(new)
        print("README.md: report blocks rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
