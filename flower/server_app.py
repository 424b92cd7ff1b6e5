"""The regl Flower App's ServerApp: on the SuperLink's side, the federated_train stage of the repository named by
run config `workdir`, with its own paths (stages/federated_train.py), its clients on the SuperNodes."""

import importlib.util
import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    workdir = Path(str(context.run_config.get("workdir", "")) or ".").expanduser().resolve()
    script = workdir / "stages" / "federated_train.py"
    spec = importlib.util.spec_from_file_location("federated_train_stage", script)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.train_on_flower(stage.Files().under(workdir), grid, logging.getLogger("regl.federated_train"))
