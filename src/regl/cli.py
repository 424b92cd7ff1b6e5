"""The `regl` command: tools around the pipeline (the stages themselves run through DVC)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from regl.report import ablations, cells, read_runs, skew_recovery, table1, table2, table2c, unplaced

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
    """Print the paper's tables (methods x skew and local epochs; methods x clients) and ReGL's ablations as
    Markdown, each cell mean ± std (n) over the runs that differ only in their seeds."""
    if exp_json is not None:
        data = json.loads(exp_json.read_text())
    else:
        cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"] + (["-A"] if all_commits else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            typer.echo(f"error: dvc exp show failed: {proc.stderr.strip().splitlines()[-1:]}", err=True)
            raise typer.Exit(2)
        data = json.loads(proc.stdout)
    found, skipped = read_runs(data)
    for note in skipped:
        typer.echo(f"note: skipped {note}", err=True)
    if not found:
        typer.echo("error: no experiment with training metrics (train.json) found (run `dvc exp run` first)", err=True)
        raise typer.Exit(2)
    typer.echo(render(cells(found), beta))


def render(all_cells, beta: float) -> str:
    """The report's Markdown: every cell ``mean ± std (n)`` over seeds, accuracy in %."""
    parts = [
        "Table 1: global test accuracy at the last round (%), by skew β and local epochs E",
        table1(all_cells, "final"),
        "Table 1b: global test accuracy, mean of the last five rounds (%)",
        table1(all_cells, "last5"),
        "Table 1c: personalized test accuracy, mean over clients (%)",
        table1(all_cells, "personalized"),
        f"Table 2: global test accuracy at the last round (%), by number of clients M, at β = {beta:g}",
        table2(all_cells, beta, "final"),
        f"Table 2b: global test accuracy, mean of the last five rounds (%), by number of clients M, at β = {beta:g}",
        table2(all_cells, beta, "last5"),
    ]
    pathological = table2c(all_cells, "final")
    if pathological:
        parts += ["Table 2c: global test accuracy at the last round (%), by number of clients M, on the pathological "
                  "split (each client holds the same number of classes)", pathological,
                  "Table 2d: global test accuracy, mean of the last five rounds (%), on the pathological split",
                  table2c(all_cells, "last5")]
    parts += ["Ablations: ReGL variants (%)", ablations(all_cells)]
    other = unplaced(all_cells)
    if other:
        parts += ["Other cells (in none of the tables above)", other]
    recovered = [skew_recovery(all_cells, beta, m) for m in ("final", "last5")]
    if recovered[0]:
        parts += ["Label skew recovered, on the means over seeds",
                  "\n".join(r for r in recovered if r)]
    return "\n\n".join(parts)


if __name__ == "__main__":
    app()
