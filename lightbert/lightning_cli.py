"""``lightbert fit|validate|test``: LightningCLI over ``SequenceClassifier`` and ``ClassificationDataModule``.

LightningCLI's conventions (``--model.*``, ``--data.*``, ``--trainer.*``, ``--config``, ``--print_config``,
``--ckpt_path``), plus ``--checkpoint.*`` for the checkpoint callback. Everything a user can get wrong (data,
base model, output directory, the checkpoint to resume from) is checked before the Trainer exists, so a bad input
never leaves a half-made run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightbert.arguments import OneLineErrors, boolean_options, expand_flags
from lightbert.callbacks import TRIAL_ENVIRONMENT, Checkpointing, StopEarly, TrialReporter
from lightbert.datamodule import ClassificationDataModule
from lightbert.defaults import MAX_EPOCHS, MIN_EPOCHS, MIN_STEPS, fitted_epochs
from lightbert.devices import warn_if_bf16_is_slow
from lightbert.errors import LightbertError, Terminated, one_line
from lightbert.labels import describe_class_weights
from lightbert.model import SequenceClassifier, logged_metrics, not_resumable
from lightbert.safety import check_writable_directory
from lightbert.sources import ModelSource, identify

SUBCOMMANDS = ("fit", "validate", "test")


class OneLineErrorParser(OneLineErrors, LightningArgumentParser):
    """Parse errors become ``error: ... (...)`` on one line, like every other user error."""


def default_loggers(root_dir: str | Path) -> list[Any]:
    """A CSV log (and TensorBoard, when installed) in ``<root_dir>/version_N``, the run directory."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    csv_logger = CSVLogger(save_dir=str(root_dir), name="")
    loggers: list[Any] = [csv_logger]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    loggers.append(TensorBoardLogger(save_dir=str(root_dir), name="", version=csv_logger.version))
    return loggers


def summarize_metrics(metrics: dict[str, Any], prefix: str) -> str:
    """One line: ``validation: accuracy 0.8733, f1_macro 0.8710, loss 0.3121``."""
    parts = []
    for name, value in sorted(metrics.items()):
        if name.startswith(prefix):
            number = float(value)
            if math.isfinite(number):
                parts.append(f"{name[len(prefix) :]} {number:.4f}")
    stage = "validation" if prefix == "val_" else "test"
    return f"{stage}: {', '.join(parts) if parts else 'no metrics'}"


def process_count(devices: Any, num_nodes: Any) -> int | None:
    """How many processes ``--trainer.devices`` and ``--trainer.num_nodes`` ask for, where that is plain before the
    Trainer exists (``auto`` is not)."""
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    if not isinstance(devices, int) or devices < 1:
        return None
    return devices * (int(num_nodes) if isinstance(num_nodes, int) and num_nodes > 0 else 1)


@contextlib.contextmanager
def lightning_errors_as_ours(command: str) -> Iterator[None]:
    """Lightning's refusals of option values (a negative ``save_top_k``, devices it cannot have, an accelerator
    whose package is not installed, ...) as one-line user errors."""
    try:
        yield
    except (MisconfigurationException, ValueError, ModuleNotFoundError) as err:
        raise LightbertError(one_line(str(err))[:400], f"see lightbert {command} --help") from None


def tokenizer_source(base: str | None, recipe_base: str | None) -> str | None:
    return recipe_base or base


class LightbertCLI(LightningCLI):
    """The fit/validate/test commands. ``running`` is the instance whose subcommand runs (its constructor runs it),
    so a SIGTERM caught outside can find its checkpoint callback."""

    running: LightbertCLI | None = None

    def __init__(self, args: list[str]) -> None:
        self._resumed_step: int | None = None
        super().__init__(
            SequenceClassifier,
            ClassificationDataModule,
            args=args,
            seed_everything_default=42,
            # lightbert's samplers split the data across processes themselves (global batches, each row once).
            trainer_defaults={"max_epochs": None, "default_root_dir": "runs", "use_distributed_sampler": False},
            parser_kwargs={"description": "lightbert: fine-tune BERT-family sequence classifiers."},
            auto_configure_optimizers=False,
            parser_class=OneLineErrorParser,
        )

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        self._preparing = subcommand  # add_arguments_to_parser adds what this subcommand uses
        return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        max_epochs = parser._option_string_actions.get("--trainer.max_epochs")
        if max_epochs is not None:  # Lightning's help says its own default (1000), which lightbert replaces
            max_epochs.help = (
                "Stop training once this number of epochs is reached (default: fitted to the data, the fewest"
                f" epochs from {MIN_EPOCHS} to {MAX_EPOCHS} that make {MIN_STEPS:,} optimizer steps)."
            )
        if getattr(self, "_preparing", "fit") == "fit":  # checkpoints are written by training only
            parser.add_lightning_class_args(Checkpointing, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.monitor": "val_loss",
                    "checkpoint.mode": "min",
                    "checkpoint.save_top_k": 1,
                    "checkpoint.save_last": True,
                    "checkpoint.filename": "best-epoch={epoch}-step={step}-val_loss={val_loss:.4f}",
                    "checkpoint.auto_insert_metric_name": False,
                }
            )
            parser.add_lightning_class_args(StopEarly, "early_stopping")
        # The tokenizer comes from the model fine-tuning starts from (for a recipe checkpoint, its directory).
        parser.link_arguments(("model.base", "model.recipe_base"), "data.tokenizer", compute_fn=tokenizer_source)
        parser.add_argument(
            "--trust_checkpoint",
            type=bool,
            default=False,
            help="Unpickle --ckpt_path fully. Only for a checkpoint you made yourself: a pickle can run any code.",
        )
        if getattr(self, "_preparing", "fit") in ("fit", "test"):
            parser.add_argument(
                "--evaluation_dir",
                type=str | None,
                default=None,
                help="Write lightbert evaluate's report (report.json, report.md, figures) on --data.test here: for"
                " test, of the checkpoint; for fit, of the best checkpoint at the end.",
            )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args and args[0] in self._subcommand_parsers:  # boolean options read as flags too
            args = expand_flags(args, boolean_options(self._subcommand_parsers[args[0]]._actions))
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would feed the checkpoint's hyper-parameters back into the config, which lets a file
        # choose classes to instantiate. A checkpoint here only restores state; the command line decides.
        return

    def instantiate_classes(self) -> None:
        # Check everything a user can get wrong before the Trainer exists (and before it prints anything):
        # the data (files, columns, labels), the output directory and the checkpoint to resume from.
        instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes  # renamed in 4.49
        # Lightning's own checks of the options it takes (Trainer, checkpoint) as one-line errors.
        with lightning_errors_as_ours(str(self.subcommand)):
            self.config_init = instantiate(self.config)
        type(self).running = self
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        checkpoint = self._checkpoint_to_restore()
        if checkpoint is not None:  # its tokenizer, labels and limits, whatever the base
            self.datamodule.use_checkpoint(checkpoint.section)
        self.datamodule.setup(self.subcommand)
        self.model.preflight(self.datamodule, checkpoint, str(self.subcommand))
        if self.subcommand == "fit":
            self._fit_settings_to_data()
        if self.subcommand == "fit" and self.model.loss_weights and rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            print(describe_class_weights(str(self.model.task), list(self.model.labels or []), self.model.loss_weights))
        self._check_monitor()
        self._check_evaluation_dir()
        trainer_config = self._get(self.config_init, "trainer", default={})
        if self.subcommand == "fit":
            root = trainer_config.get("default_root_dir") or "runs"
            check_writable_directory(root, "output directory", create=False)
            dirpath = self._get(self.config, "checkpoint.dirpath")
            if dirpath:
                check_writable_directory(dirpath, "checkpoint directory", create=False)
        with lightning_errors_as_ours(str(self.subcommand)):
            self.trainer = self.instantiate_trainer()

    def _fit_settings_to_data(self) -> None:
        """Fill the epochs, batch size and learning rate the user left unset with values fitted to the number of
        training examples (``lightbert.defaults``), say which, and record them in the config that the run saves."""
        trainer = self._get(self.config_init, "trainer", default={})
        examples = len(self.datamodule.datasets["train"])
        fitted = {}
        if self._get(self.config, "data.batch_size") is None:
            fitted["data.batch_size"] = self.datamodule.batch_size
        if self._get(self.config, "model.learning_rate") is None:
            fitted["model.learning_rate"] = self.model.hparams["learning_rate"]
        if trainer.get("max_epochs") is None and trainer.get("max_steps") in (None, -1) and not trainer.get("max_time"):
            devices = trainer.get("devices")
            processes = (devices if isinstance(devices, int) and devices > 0 else 1) * (trainer.get("num_nodes") or 1)
            accumulate = trainer.get("accumulate_grad_batches") or 1
            epochs = fitted_epochs(examples, self.datamodule.batch_size, processes, accumulate)
            trainer["max_epochs"] = fitted["trainer.max_epochs"] = epochs
        if not fitted:
            return
        for key, value in fitted.items():
            self.config[self.subcommand][key] = value
        if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            chosen = ", ".join(f"--{key} {value:g}" for key, value in fitted.items())
            print(f"settings fitted to {examples:,} training examples: {chosen} (pass any of them to choose yourself)")

    def _check_evaluation_dir(self) -> None:
        directory = self._get(self.config, "evaluation_dir", default=None)
        if not directory:
            return
        if self.datamodule.test_path is None:
            raise LightbertError("--evaluation_dir reports on the test data", "give --data.test FILE")
        path = Path(directory)
        if (path.exists() and not path.is_dir()) or (path.is_dir() and any(path.iterdir())):
            raise LightbertError(f"--evaluation_dir {path} is not empty", "choose a new directory for the report")

    def _write_evaluation(self, classifier: Any) -> None:
        """``lightbert evaluate``'s report of ``classifier`` on the test data, into ``--evaluation_dir``."""
        from lightbert.evaluation import evaluate_file, write_report

        directory = self._get(self.config, "evaluation_dir", default=None)
        if not directory or not self.trainer.is_global_zero:
            return
        data = self.datamodule
        report = evaluate_file(
            classifier, data.test_path, data.text_column, data.text_pair_column, data.label_column,
            data.label_delimiter, data.header, data.eval_batch_size,
        )  # fmt: skip
        write_report(report, directory)
        print(report.summary())
        print(f"report: {Path(directory) / 'report.md'}")

    def _check_monitor(self) -> None:
        if self.subcommand != "fit":
            return
        names = logged_metrics(self.model.task)
        for option in ("checkpoint.monitor", "early_stopping.monitor"):
            monitor = self._get(self.config, option)
            if monitor is not None and monitor not in names:
                raise LightbertError(
                    f"--{option} {monitor} is not a metric this run logs ({', '.join(names)})", "pass one of them"
                )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if self.subcommand != "fit":
            self.save_config_callback = None  # evaluating a checkpoint writes no run directory
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True):
            # A run directory for training; evaluating a checkpoint prints its metrics and writes nothing.
            kwargs["logger"] = (
                default_loggers(config.get("default_root_dir") or "runs") if self.subcommand == "fit" else False
            )
        trainer = super().instantiate_trainer(**kwargs)
        if str(trainer.precision).startswith("bf16"):
            warn_if_bf16_is_slow(trainer.strategy.root_device)
        trial = os.environ.get(TRIAL_ENVIRONMENT)
        if trial and self.subcommand == "fit":  # a trial of lightbert tune: report to its study
            trainer.callbacks.append(TrialReporter(**json.loads(trial)))  # type: ignore[attr-defined]
        return trainer

    def _checkpoint_to_restore(self) -> ModelSource | None:
        """The checkpoint of ``--ckpt_path``, identified and checked (None without one)."""
        ckpt_path = self._get(self.config, "ckpt_path")
        trust_checkpoint = bool(self._get(self.config, "trust_checkpoint"))
        # Lightning's own load must be exactly as strict as ours: weights_only unless the user trusts the file.
        assert self.subcommand is not None
        self.config_init[self.subcommand]["weights_only"] = not trust_checkpoint
        if self._get(self.config, "weights_only") is False and not trust_checkpoint:
            raise LightbertError(
                "--weights_only false would unpickle the checkpoint fully",
                "pass --trust_checkpoint true for a file you made yourself",
            )
        if not ckpt_path:
            return None
        source = identify(ckpt_path, trust_checkpoint=trust_checkpoint)
        if source.kind != "lightbert":
            raise not_resumable(ckpt_path, source.kind, self.subcommand)
        if self.subcommand == "fit" and not source.resumable:
            raise LightbertError(
                f"{ckpt_path} is not resumable: it has no optimizer or loop state",
                f"start from it with --model.base {ckpt_path}",
            )
        self._resumed_step = int((source.checkpoint or {}).get("global_step", 0))
        if self.subcommand == "fit":
            self._check_resume_layout(source)
        return source

    def _check_resume_layout(self, source: ModelSource) -> None:
        """Before anything starts: the run resumes with the processes and batch size that wrote the checkpoint
        (the data module checks again, once the Trainer knows its processes for sure)."""
        state = (source.checkpoint or {}).get(ClassificationDataModule.__qualname__) or {}
        trainer = self._get(self.config_init, "trainer", default={})
        processes = process_count(trainer.get("devices"), trainer.get("num_nodes"))
        if not state or processes is None:
            return
        layout = ClassificationDataModule.check_resume_layout
        layout(state, processes, self._get(self.config_init, "data").batch_size)

    def _record_config(self) -> None:
        assert self.subcommand is not None
        parser = self._parser(self.subcommand)
        self.model.training_config = parser.dump(self.config[self.subcommand], skip_none=False)

    before_fit = before_validate = before_test = _record_config

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        if self._resumed_step is not None and trainer.global_step == self._resumed_step:
            print(
                f"the run is already complete at epoch {trainer.current_epoch}, step {trainer.global_step}: nothing"
                " trained (raise --trainer.max_epochs or --trainer.max_steps to train further)"
            )
            return
        print(summarize_metrics(trainer.callback_metrics, "val_"))
        for stopper in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(stopper, StopEarly) and stopper.stop_message:
                print(stopper.stop_message)
        if self.model.thresholds:
            picked = ", ".join(f"{name} {t:.3f}" for name, t in self.model.thresholds.items())
            print(f"thresholds picked on the validation data (at the latest validation): {picked}")
        callback: Any = trainer.checkpoint_callback
        if callback is not None:
            print(f"best checkpoint: {callback.best_model_path or '(none)'}")
            print(f"last checkpoint: {callback.last_model_path or '(none)'}")
            chosen = callback.best_model_path or callback.last_model_path
            if chosen and self._get(self.config, "evaluation_dir", default=None):
                from lightbert.loader import load

                self._write_evaluation(load(chosen))

    def after_validate(self) -> None:
        if self.trainer.is_global_zero:
            print(summarize_metrics(self.trainer.callback_metrics, "val_"))

    def after_test(self) -> None:
        if self.trainer.is_global_zero:
            print(summarize_metrics(self.trainer.callback_metrics, "test_"))
            if self._get(self.config, "evaluation_dir", default=None):
                self._write_evaluation(self.model.classifier())


class _DropAdvertising(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def run(args: list[str]) -> None:
    """Run ``lightbert fit|validate|test`` (``args`` starts with the subcommand)."""
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertising())
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    try:
        LightbertCLI(args)
    except SIGTERMException:
        trainer = getattr(LightbertCLI.running, "trainer", None)
        callback = getattr(trainer, "checkpoint_callback", None)
        path = getattr(callback, "saved_on_sigterm", None) or getattr(callback, "last_model_path", None)
        raise Terminated(path) from None
