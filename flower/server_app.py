"""The regl Flower App's ServerApp: on the SuperLink's side, the federated_train stage of the repository named by
run config `workdir` (regl.federated.flower_engine.serve_repository: its params.yaml, its files as its dvc.yaml
names them), its clients on the SuperNodes."""

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from regl.core.errors import ReglError
from regl.core.stage import report
from regl.federated.flower_engine import serve_repository

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
    try:
        serve_repository(grid, workdir, logging.getLogger("regl.federated_train"))
    except ReglError as exc:  # bad input, or a node that failed or dropped out: one line, and the run fails
        report(exc)
        logging.getLogger("flwr").addFilter(_OneLine())
        raise
