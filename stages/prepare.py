"""Stage `prepare`: turn the data source into data/prepared/{train,val,test,public}.parquet."""

from pathlib import Path

import typer

from regl.core.atomic import atomic_dir
from regl.core.params import DEFAULT_PARAMS, load_section
from regl.data.prepare import PrepareParams, prepare
from regl.data.sources import load_source
from regl.core.stage import pipeline_paths, stage

app = typer.Typer(add_completion=False)
PATHS = pipeline_paths(Path(__file__).resolve().parents[1])  # as dvc.yaml names them


@app.command()
def main(
    params: Path = typer.Option(DEFAULT_PARAMS, help="params file"),
    out: Path = typer.Option(PATHS.data.prepared, help="output folder"),
) -> None:
    with stage("prepare") as log:
        p = load_section(params, "prepare", PrepareParams)
        data = load_source(p.source, p.fashion_mnist_dir)
        with atomic_dir(out) as tmp:
            counts = prepare(data, p, tmp)
        log.info("wrote %s: %s", out, ", ".join(f"{n} {name}" for name, n in counts.items()))


if __name__ == "__main__":
    app()
