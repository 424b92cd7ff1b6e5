"""The `regl` command: tools around the pipeline (the stages themselves run through DVC)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from regl.report import runs, table1, table2

app = typer.Typer(add_completion=False, help="regl: federated learning under label skew, with DVC.")


@app.callback()
def _main() -> None:
    """regl: federated learning under label skew, with DVC."""


@app.command()
def report(
    exp_json: Optional[Path] = typer.Option(None, "--json", help="a saved `dvc exp show --json` (default: run it)"),
    all_commits: bool = typer.Option(False, "--all-commits", "-A", help="include experiments of every commit"),
    beta: float = typer.Option(0.01, "--beta", help="the skew β of Table 2's runs"),
) -> None:
    """Print the paper's Table 1 (methods x beta, local epochs) and Table 2 (methods x clients) as Markdown."""
    if exp_json is not None:
        data = json.loads(exp_json.read_text())
    else:
        cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"] + (["-A"] if all_commits else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            typer.echo(f"error: dvc exp show failed: {proc.stderr.strip().splitlines()[-1:]}", err=True)
            raise typer.Exit(2)
        data = json.loads(proc.stdout)
    found = runs(data)
    if not found:
        typer.echo("error: no experiment with training metrics (train.json) found (run `dvc exp run` first)", err=True)
        raise typer.Exit(2)
    typer.echo("Table 1: global / mean personalized test accuracy (%), by skew β and local epochs E\n")
    typer.echo(table1(found))
    typer.echo(f"\nTable 2: global test accuracy (%), by number of clients M, at β = {beta:g}\n")
    typer.echo(table2(found, beta))


if __name__ == "__main__":
    app()
