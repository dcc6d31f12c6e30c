"""Lightning callbacks and plugins: the checkpoint callback and atomic checkpoint files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightbert.errors import LightbertError
from lightbert.runs import run_record
from lightbert.safety import atomic_write, check_writable_directory, remove_stale_temporaries

BEST_ALIAS = "best.ckpt"  # the best checkpoint under a name to script against, beside Lightning's descriptive one


def _absolute(path: Any) -> Any:
    """A local path made absolute (relative ones are taken from the working directory); others as they are."""
    return os.path.abspath(path) if isinstance(path, str) and path and "://" not in path else path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in its own directory, fsyncs it and renames it into place, so a
    kill, a crash or a full disk never leaves a partial file under a checkpoint's name, and the previous
    checkpoint of that name stays intact until the new one is complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f), what="checkpoint")


def sigterm_handler(trainer: Any, connector: Any) -> Callable[[int, Any], None]:
    """SIGTERM only marks the run to stop at the next batch boundary (and passes the signal to the processes the
    launcher started). Lightning's own handler also broadcasts from inside the handler, a collective that meets
    whatever collective another process is in at that moment; the stop is shared at the batch boundary anyway,
    where Lightning broadcasts the first process's decision to all."""

    def handle(signum: int, frame: Any) -> None:
        if not connector.received_sigterm:
            launcher = trainer.strategy.launcher
            if launcher is not None:
                launcher.kill(signum)
        connector.received_sigterm = True

    return handle


class Checkpointing(ModelCheckpoint):
    """``ModelCheckpoint`` (best by ``val_loss`` and ``last.ckpt`` at each validation) that also:

    - refreshes ``last.ckpt`` every ``last_every_n_steps`` optimizer steps, so a crash loses at most that many
      steps (Lightning's own ``every_n_train_steps`` excludes ``every_n_epochs``; this keeps both);
    - writes every checkpoint atomically (it installs ``AtomicCheckpointIO`` unless another IO plugin is set);
    - checks that its directory is writable before training starts, and removes temporary files that a killed
      run left there;
    - on SIGTERM (preemption, ``kill``), saves ``last.ckpt`` at the batch boundary where Lightning stops;
    - refreshes ``last.ckpt`` at every validation (and epoch end), also when the monitored metric did not improve:
      Lightning 2.6 refreshes it only when it saves a top-k checkpoint, which would leave ``last.ckpt`` (the one
      to resume from) at an older epoch;
    - keeps the best checkpoint also as ``best.ckpt`` (a hard link where the file system has them, else a copy),
      and remembers each saved checkpoint's epoch, step and validation metrics (``best_details``,
      ``last_details``), for the run's summary;
    - restores its whole top-k state on resume (``best_model_score``, ``best_model_path``, the k best,
      ``kth_value``), also when the resumed run writes to another directory, where Lightning keeps only
      ``best_model_path``: a resumed run names the same best checkpoint as the uninterrupted one;
    - makes a checkpoint written during a validation (a SIGTERM there) resume by running that validation again from
      its first batch, where Lightning would skip it or finish it on part of the data;
    - records in each checkpoint the run directory and how many rows its ``metrics.csv`` holds
      (``lightbert.runs``), so that ``lightbert fit --ckpt_path`` continues the run's log.

    Args:
        last_every_n_steps: refresh last.ckpt every N optimizer steps (default: only at validations).
    """

    def __init__(self, *args: Any, last_every_n_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if last_every_n_steps is not None and last_every_n_steps < 1:
            raise LightbertError(
                f"last_every_n_steps must be at least 1, not {last_every_n_steps}",
                "pass --checkpoint.last_every_n_steps 100",
            )
        self.last_every_n_steps = last_every_n_steps
        self._last_step_refreshed = -1
        self.saved_on_sigterm: str | None = None
        self.best_details: dict[str, dict[str, Any]] = {}  # path -> {"epoch", "step", "metrics"}
        self.last_details: dict[str, Any] | None = None
        self.validations_run = 0  # in this process (a resume may validate the epoch a stop interrupted)
        # A step-wise checkpoint is written before Lightning logs that batch's row: the row goes into the checkpoint,
        # and a run resumed from it logs the row first.
        self._pending_row: dict[str, Any] | None = None

    @property
    def best_alias_path(self) -> str | None:
        """``<dirpath>/best.ckpt`` when there is a best checkpoint under another name."""
        if not self.best_model_path or not self.dirpath:
            return None
        alias = os.path.join(self.dirpath, BEST_ALIAS)
        return None if os.path.abspath(alias) == os.path.abspath(self.best_model_path) else alias

    def _details(self, trainer: Any) -> dict[str, Any]:
        candidates = self._monitor_candidates(trainer)
        metrics = {}
        for name, value in candidates.items():
            if name.startswith("val_"):
                number = float(value)
                if number == number:  # NaN says nothing about a checkpoint
                    metrics[name] = number
        return {"epoch": int(candidates["epoch"]), "step": int(candidates["step"]), "metrics": metrics}

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        # Lightning sets best_k_models (top-k) or last_model_path before it saves: the details are part of the state.
        if filepath in self.best_k_models:
            self.best_details[filepath] = self._details(trainer)
            self.best_details = {p: d for p, d in self.best_details.items() if p in self.best_k_models}
        else:
            self.last_details = self._details(trainer)
        super()._save_checkpoint(trainer, filepath)

    def _update_best_and_save(self, current: Any, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        super()._update_best_and_save(current, trainer, monitor_candidates)
        self._link_best(trainer)

    def _link_best(self, trainer: Any) -> None:
        """Point ``best.ckpt`` at the best checkpoint: a hard link renamed into place (atomic), else a copy."""
        alias = self.best_alias_path
        if alias is None or not trainer.is_global_zero or "://" in alias or not os.path.isfile(self.best_model_path):
            return
        if os.path.isfile(alias) and os.path.samefile(alias, self.best_model_path):
            return
        staged = os.path.join(os.path.dirname(alias), f".{BEST_ALIAS}.{os.getpid()}.link.tmp")
        try:
            if os.path.lexists(staged):
                os.remove(staged)
            os.link(self.best_model_path, staged)
            os.replace(staged, alias)
        except OSError:  # no hard links here: a copy
            with open(self.best_model_path, "rb") as source:
                atomic_write(Path(alias), lambda f: shutil.copyfileobj(source, f), what="checkpoint")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["best_details"] = dict(self.best_details)
        state["last_details"] = self.last_details
        state["pending_row"] = self._pending_row
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the top-k state only into the same directory; the best so far is the run's, wherever
        # the resumed run writes (Lightning never removes a checkpoint outside its own directory).
        self.best_model_score = state_dict["best_model_score"]
        self.best_model_path = _absolute(state_dict["best_model_path"])
        self.kth_best_model_path = _absolute(state_dict.get("kth_best_model_path", self.kth_best_model_path))
        self.kth_value = state_dict.get("kth_value", self.kth_value)
        best_k = state_dict.get("best_k_models", self.best_k_models)
        self.best_k_models = {_absolute(path): score for path, score in best_k.items()}
        self.last_model_path = _absolute(state_dict.get("last_model_path", self.last_model_path))
        self.best_details = {_absolute(path): d for path, d in (state_dict.get("best_details") or {}).items()}
        self.last_details = state_dict.get("last_details")
        self._pending_row = state_dict.get("pending_row")

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        own = checkpoint.get("callbacks", {}).get(self.state_key)
        if own is not None:
            own["run"] = run_record(trainer)
        fit_loop = (checkpoint.get("loops") or {}).get("fit_loop")
        if trainer.validating and trainer.state.fn == "fit" and not trainer.sanity_checking and fit_loop:
            # Saved during a validation (SIGTERM): resume as if it had not started. Lightning resumes a validation
            # at the batch where it stopped, on metrics that start from nothing, or skips it.
            fit_loop["epoch_loop.val_loop.batch_progress"] = {
                "total": {"ready": 1, "started": 1, "processed": 0, "completed": 0},
                "current": {"ready": 1, "started": 1, "processed": 0, "completed": 0},
                "is_last_batch": False,
            }

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Absolute paths in the state: a run resumed from another working directory (or given its checkpoint by
        # another spelling of the path) still finds its own last.ckpt and best checkpoints under their names.
        self.dirpath = _absolute(self.dirpath)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if stage == "fit" and self.dirpath and "://" not in str(self.dirpath) and trainer.is_global_zero:
            check_writable_directory(self.dirpath, "checkpoint directory")
            remove_stale_temporaries(Path(self.dirpath))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self._link_best(trainer)  # a run stopped between its best checkpoint and the link, or resumed elsewhere
        if self._pending_row is not None:
            trainer._logger_connector.log_metrics(dict(self._pending_row["metrics"]), step=self._pending_row["step"])
            self._pending_row = None
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm_handler(trainer, connector))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.validations_run += 1
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: Any) -> None:
        """Save ``last.ckpt`` for this step unless a checkpoint was saved at it already."""
        saved_already = self._last_global_step_saved == trainer.global_step
        if self.save_last and not saved_already and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if (
            self.last_every_n_steps
            and self.save_last
            and step > 0
            and step % self.last_every_n_steps == 0
            and step != self._last_step_refreshed
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
        ):
            self._last_step_refreshed = step
            saved_step = self._last_global_step_saved
            self._pending_row = self._row_to_log(trainer)
            try:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            finally:
                self._pending_row = None
            # A step save must not stop the validation at this same step from saving the best checkpoint.
            self._last_global_step_saved = saved_step

    @staticmethod
    def _row_to_log(trainer: Any) -> dict[str, Any] | None:
        """The row Lightning logs for this batch once its hooks are done (None when it logs none)."""
        connector = trainer._logger_connector
        if not trainer.loggers or trainer.fit_loop._should_accumulate() or not connector.should_update_logs:
            return None
        metrics = {name: float(value) for name, value in connector.metrics["log"].items()}
        metrics.setdefault("epoch", trainer.current_epoch)  # as Lightning adds it when it logs the row itself
        return {"metrics": metrics, "step": int(trainer.fit_loop.epoch_loop._batches_that_stepped)}

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning raises SIGTERMException between batches, where the state is consistent and resumable.
        if (
            isinstance(exception, SIGTERMException)
            and self.save_last
            and not trainer.sanity_checking
            and trainer.global_step > 0
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self.saved_on_sigterm = self.last_model_path


LOWER_IS_BETTER = ("loss", "mse")


def metric_mode(monitor: str) -> str:
    """``min`` for losses and errors, ``max`` for the other metrics a run logs (accuracy, F1, correlations)."""
    return "min" if monitor.endswith(LOWER_IS_BETTER) else "max"


class StopEarly(EarlyStopping):
    """Lightning's ``EarlyStopping``, off unless ``patience`` is given, checked at every validation (before the
    checkpoint of that validation is written, so its state is in the checkpoint and a resumed run stops where the
    uninterrupted one does), and saying when and why it stopped.

    Args:
        patience: stop after this many validation runs without improvement (default: never stop early).
        monitor: the metric to watch (default: val_loss); its direction follows from its name.
        min_delta: the smallest change that counts as an improvement.
    """

    def __init__(self, patience: int | None = None, monitor: str = "val_loss", min_delta: float = 0.0) -> None:
        if patience is not None and patience < 0:
            raise LightbertError(f"patience must be 0 or more, not {patience}", "pass --early_stopping.patience 2")
        if min_delta < 0:
            raise LightbertError(
                f"min_delta must be 0 or more, not {min_delta}", "pass --early_stopping.min_delta 0.001"
            )
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience if patience is not None else 0,
            mode=metric_mode(monitor),
            check_on_train_epoch_end=False,
        )
        self.enabled = patience is not None
        self.stop_message: str | None = None

    @property
    def state_key(self) -> str:
        return "StopEarly"

    def _should_skip_check(self, trainer: Any) -> bool:
        return not self.enabled or super()._should_skip_check(trainer)

    def _run_early_stopping_check(self, trainer: Any) -> None:
        was_stopping = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if trainer.should_stop and not was_stopping and self.stopping_reason_message:
            best = float(self.best_score)
            self.stop_message = (
                f"stopped early after epoch {trainer.current_epoch}: {self.monitor} has not improved on {best:.4f}"
                f" by more than {abs(self.min_delta):g} for {self.wait_count} validation run(s)"
                f" (--early_stopping.patience {self.patience})"
            )


TRIAL_ENVIRONMENT = "LIGHTBERT_TRIAL"  # set by lightbert tune for the fit process of a trial


class TrialReporter(Callback):
    """For ``lightbert tune``: reports the tuned metric to the Optuna trial after every validation run, stops the
    run when the pruner says so, and at the end writes the trial's outcome (``state``, ``value``, the best
    checkpoint) to ``result`` as JSON, for the tune process that started this one."""

    def __init__(
        self,
        storage: str,
        study: str,
        trial_id: int,
        metric: str,
        direction: str,
        result: str,
        pruner_startup_trials: int = 2,
    ) -> None:
        import optuna

        # The pruner is not in the storage: this process builds the one the tune process chose.
        pruner = optuna.pruners.MedianPruner(n_startup_trials=pruner_startup_trials, n_warmup_steps=0)
        self.trial = optuna.trial.Trial(optuna.load_study(study_name=study, storage=storage, pruner=pruner), trial_id)
        self.metric, self.direction, self.result = metric, direction, Path(result)
        self.values: list[float] = []
        self.pruned = False

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            return
        self.values.append(float(value))
        self.trial.report(float(value), step=len(self.values) - 1)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        finite = [v for v in self.values if v == v]
        best = (min if self.direction == "minimize" else max)(finite) if finite else None
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", None) or None
        outcome = {"state": "pruned" if self.pruned else "complete", "value": best, "values": self.values,
                   "validations": len(self.values), "best_checkpoint": checkpoint}  # fmt: skip
        data = json.dumps(outcome).encode()

        def write(f: Any) -> None:
            f.write(data)

        atomic_write(self.result, write, what="trial result")


def progress_bar() -> Any:
    """Lightning's progress bar (Rich where installed, else tqdm) without ``v_num`` (the run directory is printed
    instead), and without a negative epoch count when the run ends on ``max_steps``."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    base: Any = RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar

    class RunProgressBar(base):
        def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

        def _get_train_description(self, current_epoch: int) -> str:
            if (self.trainer.max_epochs or -1) > 0:
                return str(super()._get_train_description(current_epoch))
            description = f"Epoch {current_epoch}"
            return f"{description:{len(self.validation_description)}}"

    return RunProgressBar()
