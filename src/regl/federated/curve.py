"""The per-round curve of federated_train, logged with DVCLive as each round ends, where DVC's own tools read it
while the run goes on (`dvc plots show`, `dvc exp show`, DVC Studio, the VS Code extension):
``<folder>/plots/metrics/{test,val}/{accuracy,loss}.tsv`` (step = round) and ``<folder>/metrics.json`` (the
latest round).

DVCLive appends to its files: a killed run leaves them cut at some round. A resumed run starts the folder over
and logs the rounds its checkpoint holds first, so the files end the same as an uninterrupted run's.
"""

from __future__ import annotations

from pathlib import Path

# (split prefix in a curve point, DVCLive folder)
SPLITS = (("", "test"), ("val_", "val"))


class CurveLog:
    def __init__(self, folder: Path, done: list[dict]):
        from dvclive import Live  # imported here: the library's other users need not load DVC

        # save_dvc_exp, dvcyaml, report: the pipeline is DVC's already (dvc.yaml names the files); DVCLive only logs
        self.live = Live(str(folder), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        for point in done:
            self.log(point)

    def log(self, point: dict) -> None:
        """One round: its test (and validation) accuracy and loss, without timestamps (same run, same bytes)."""
        self.live.step = point["round"]
        for prefix, split in SPLITS:
            for name in ("accuracy", "loss"):
                if f"{prefix}{name}" in point:
                    self.live.log_metric(f"{split}/{name}", point[f"{prefix}{name}"], timestamp=False)
        self.live.log_metric("clients", point["clients"], timestamp=False)
        self.live.next_step()  # writes metrics.json and tells a running `dvc exp run` the round is done

    def close(self) -> None:
        self.live.end()
