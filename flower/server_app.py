"""The regl Flower App's ServerApp: on the SuperLink's side, the federated_train stage of the repository named by
run config `workdir`, with its own paths (stages/federated_train.py), its clients on the SuperNodes."""

import importlib.util
import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from regl.core.errors import ReglError
from regl.core.stage import report

app = ServerApp()


class _OneLine(logging.Filter):
    """Flower logs a failed ServerApp with its traceback; a ReglError has said it all in its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ReglError):
            record.exc_info = record.exc_text = None
        return True


@app.main()
def main(grid: Grid, context: Context) -> None:
    workdir = Path(str(context.run_config.get("workdir", "")) or ".").expanduser().resolve()
    script = workdir / "stages" / "federated_train.py"
    spec = importlib.util.spec_from_file_location("federated_train_stage", script)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    try:
        stage.train_on_flower(stage.Files().under(workdir), grid, logging.getLogger("regl.federated_train"))
    except ReglError as exc:  # bad input, or a node that failed or dropped out: one line, and the run fails
        report(exc)
        logging.getLogger("flwr").addFilter(_OneLine())
        raise
