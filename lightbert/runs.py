"""Run directories (``runs/version_N``): the loggers that write them, and continuing one when a run resumes.

A resumed run goes on in the directory of the checkpoint it resumes from, so that its metrics, checkpoints and the
best checkpoint so far stay in one place. Its ``metrics.csv`` keeps exactly the rows written before that checkpoint
(the checkpoint records how many): rows that an interrupted run logged after its last checkpoint are logged again
by the resumed run, not twice.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lightbert.errors import LightbertError

METRICS_FILE = _ExperimentWriter.NAME_METRICS_FILE


class RunWriter(ExperimentWriter):
    """Lightning's CSV writer, counting the rows it has written, and continuing a ``metrics.csv`` of ``keep_rows``
    rows instead of deleting it (Lightning deletes a log directory's metrics.csv when it starts)."""

    def __init__(self, log_dir: str, keep_rows: int | None = None) -> None:
        self.keep_rows = keep_rows
        self.rows_written = 0
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self.keep_rows is None or not path.is_file():
            return super()._check_log_dir_exists()
        keys, rows = read_metrics(path)
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows[: self.keep_rows])
        self.metrics_keys = keys
        self.rows_written = min(len(rows), self.keep_rows)

    def save(self) -> None:
        pending = len(self.metrics)
        super().save()
        self.rows_written += pending


def read_metrics(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A metrics.csv's columns and rows."""
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


class RunLogger(CSVLogger):
    """``CSVLogger`` writing ``<root>/version_N/metrics.csv`` with a ``RunWriter``."""

    def __init__(self, root_dir: str | Path, version: int | str | None = None, keep_rows: int | None = None) -> None:
        super().__init__(save_dir=str(root_dir), name="", version=version)
        self.keep_rows = keep_rows

    @property
    def experiment(self) -> RunWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = RunWriter(log_dir=self.log_dir, keep_rows=self.keep_rows)
        return self._experiment  # type: ignore[return-value]


def default_loggers(root_dir: str | Path, resume: ResumedRun | None = None) -> list[Any]:
    """A CSV log (and TensorBoard, when installed) in ``<root_dir>/version_N``, the run directory; for a resumed
    run, in the run directory it resumes."""
    if resume is not None:
        root_dir, version = resume.directory.parent, resume.directory.name
        csv_logger = RunLogger(root_dir, version=version, keep_rows=resume.metrics_rows)
    else:
        csv_logger = RunLogger(root_dir)
    loggers: list[Any] = [csv_logger]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    from lightning.pytorch.loggers import TensorBoardLogger

    # purge_step: TensorBoard hides what the interrupted run logged from the checkpoint's step on
    extra: dict[str, Any] = {"purge_step": resume.global_step} if resume is not None else {}
    loggers.append(TensorBoardLogger(save_dir=str(root_dir), name="", version=csv_logger.version, **extra))
    return loggers


@dataclass
class ResumedRun:
    """The run directory a checkpoint belongs to, and how far its log had got when the checkpoint was written."""

    directory: Path
    metrics_rows: int | None
    global_step: int


def resumed_run(checkpoint_path: str | Path, checkpoint: dict[str, Any]) -> ResumedRun | None:
    """The run directory that wrote ``checkpoint`` (at ``checkpoint_path``), when the checkpoint is still in it:
    ``<run>/checkpoints/NAME.ckpt`` beside the run's ``metrics.csv`` (None otherwise: a checkpoint copied elsewhere
    starts a new run directory)."""
    path = Path(checkpoint_path).resolve()
    states = checkpoint.get("callbacks") or {}
    recorded = next((s["run"] for s in states.values() if isinstance(s, dict) and isinstance(s.get("run"), dict)), None)
    if recorded is None:
        return None
    directory = recorded.get("directory")
    if not isinstance(directory, str) or Path(directory).resolve() != path.parent.parent:
        return None
    rows = recorded.get("metrics_rows") if isinstance(recorded.get("metrics_rows"), int) else None
    metrics = path.parent.parent / METRICS_FILE
    if rows and metrics.is_file() and len(read_metrics(metrics)[1]) < rows:
        # rows lost (the file was edited or cut): the run's log cannot be continued truthfully
        raise LightbertError(
            f"{metrics} has fewer rows than the {rows} written before {path.name}",
            f"restore the run's metrics.csv, or resume from a copy of {path.name} outside {path.parent.parent}",
        )
    return ResumedRun(path.parent.parent, rows, int(checkpoint["global_step"]))


def run_record(trainer: Any) -> dict[str, Any] | None:
    """What a checkpoint records of its run directory: where it is and how many rows its metrics.csv has (the
    loggers are flushed first, so the file holds every row logged before this checkpoint)."""
    rows = None
    for logger in trainer.loggers:
        logger.save()
        if isinstance(logger, RunLogger):  # on other processes than the first, its experiment is a stand-in
            written = getattr(logger.experiment, "rows_written", None)
            rows = written if isinstance(written, int) else rows
    directory = trainer.log_dir if trainer.loggers else None
    if directory is None:
        return None
    return {"directory": str(Path(directory).resolve()), "metrics_rows": rows}
