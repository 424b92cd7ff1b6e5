"""The `regl` command: tools around the pipeline (the stages themselves run through DVC)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from regl.core.atomic import write_text
from regl.report import draw_figures, fill, load_grids, read_runs, render

app = typer.Typer(add_completion=False, help="regl: federated learning under label skew, with DVC.")


@app.callback()
def _main() -> None:
    """regl: federated learning under label skew, with DVC."""


@app.command()
def report(
    exp_json: Optional[Path] = typer.Option(None, "--json", help="a saved `dvc exp show --json` (default: run it)"),
    all_commits: bool = typer.Option(False, "--all-commits", "-A", help="include experiments of every commit"),
    grids_file: Path = typer.Option(Path("experiments/grids.yaml"), "--grids", help="the tables and figures to make"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="the defaults the grids override"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="rewrite the tables under this file's "
                                            "`<!-- regl report: GRID [METRIC] -->` markers instead of printing"),
    figures: Optional[Path] = typer.Option(None, "--figures", help="write the grids file's figures (PNG) here"),
) -> None:
    """The grids file's tables (Markdown, each cell mean ± std (n) over its runs' seeds, in %) and figures."""
    for option, path in (("--json", exp_json), ("--markdown", markdown)):
        if path is not None and not path.is_file():
            typer.echo(f"error: {option} {path}: no such file", err=True)
            raise typer.Exit(2)
    if exp_json is not None:
        try:
            data = json.loads(exp_json.read_text())
        except ValueError as exc:
            typer.echo(f"error: --json {exp_json}: not JSON ({exc})", err=True)
            raise typer.Exit(2)
    else:
        cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"] + (["-A"] if all_commits else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            typer.echo(f"error: dvc exp show failed: {proc.stderr.strip().splitlines()[-1:]}", err=True)
            raise typer.Exit(2)
        data = json.loads(proc.stdout)
    try:
        grids = load_grids(grids_file, params_file)
    except (OSError, ValueError, KeyError) as exc:
        typer.echo(f"error: {grids_file}: {exc}", err=True)
        raise typer.Exit(2)
    found, skipped = read_runs(data, diverged=True)  # diverged runs: no table shows them, a search counts them
    for note in skipped:
        typer.echo(f"note: skipped {note}", err=True)
    if not [r for r in found if not r.diverged]:
        typer.echo("error: no experiment with training metrics (train.json) found (run `dvc exp run` first)", err=True)
        raise typer.Exit(2)
    if figures is not None:
        for path in draw_figures(grids, found, figures):
            typer.echo(f"wrote {path}", err=True)
    if markdown is not None:
        text = markdown.read_text()
        new = fill(text, grids, found)
        if new != text:
            write_text(markdown, new)
            typer.echo(f"rewrote the tables of {markdown}", err=True)
    else:
        typer.echo(render(grids, found))


if __name__ == "__main__":
    app()
