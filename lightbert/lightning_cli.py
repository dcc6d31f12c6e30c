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
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightbert.arguments import OneLineErrors, boolean_options, expand_flags
from lightbert.callbacks import TRIAL_ENVIRONMENT, Checkpointing, StopEarly, TrialReporter, progress_bar
from lightbert.datamodule import ClassificationDataModule
from lightbert.defaults import MAX_EPOCHS, MIN_EPOCHS, MIN_STEPS, fitted_epochs
from lightbert.devices import warn_if_bf16_is_slow
from lightbert.errors import LightbertError, Terminated, one_line
from lightbert.labels import describe_class_weights
from lightbert.model import SequenceClassifier, logged_metrics, not_resumable
from lightbert.runs import ResumedRun, default_loggers, resumed_run
from lightbert.safety import check_writable_directory
from lightbert.sources import ModelSource, identify

SUBCOMMANDS = ("fit", "validate", "test")


class OneLineErrorParser(OneLineErrors, LightningArgumentParser):
    """Parse errors become ``error: ... (...)`` on one line, like every other user error."""


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


def shown_path(path: str | Path) -> str:
    """A path as a user would type it: relative to the working directory when it is inside it."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def describe_checkpoint(role: str, path: str, details: dict[str, Any] | None, monitor: str | None) -> str:
    """``best: epoch 1, step 376, val_loss 0.3174, accuracy 0.8920 → runs/version_0/checkpoints/best.ckpt``."""
    parts = []
    if details:
        parts = [f"epoch {details['epoch']}", f"step {details['step']}"]
        metrics = details.get("metrics") or {}
        names = sorted(metrics, key=lambda name: (name != monitor, name))
        parts += [f"{name if name == monitor else name.removeprefix('val_')} {metrics[name]:.4f}" for name in names]
    return f"{role}: {', '.join(parts) + ' → ' if parts else ''}{shown_path(path)}"


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


# What a resumed run must share with the run it continues (the data files are compared by their contents; the class
# weights, labels, task, batch size and processes are checked where they are read).
RESUME_MUST_MATCH = (
    "seed_everything",
    *(f"model.{name}" for name in ("base", "recipe_base", "learning_rate", "weight_decay", "warmup_ratio",
                                   "warmup_steps", "new_head", "tune_thresholds")),
    *(f"data.{name}" for name in ("text_column", "text_pair_column", "label_column", "label_delimiter", "header",
                                  "max_length", "val_fraction", "seed", "long_texts", "stride")),
    *(f"trainer.{name}" for name in ("accumulate_grad_batches", "precision", "gradient_clip_val",
                                     "gradient_clip_algorithm")),
    "checkpoint.monitor",
    "checkpoint.mode",
)  # fmt: skip


CKPT_PATH_HELP = {
    "fit": "Path of a lightbert checkpoint to resume training from, exactly where it stopped (weights, optimizer,"
    " schedule, position in the data and RNG states), e.g. runs/version_0/checkpoints/last.ckpt; the run continues in"
    " that checkpoint's run directory. To fine-tune further from a checkpoint with a new optimizer and schedule, use"
    " --model.base instead.",
    "validate": "Path of the lightbert checkpoint to validate, e.g. runs/version_0/checkpoints/best.ckpt.",
    "test": "Path of the lightbert checkpoint to test, e.g. runs/version_0/checkpoints/best.ckpt.",
}


def _normal(option: str, value: Any) -> Any:
    """A value as it acts: a path resolved, Lightning's spellings of a precision as one."""
    if option == "trainer.precision":
        text = "32" if value is None else str(value)
        return {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}.get(text, text)
    if option == "trainer.accumulate_grad_batches":
        return 1 if value is None else value
    if option in ("model.base", "model.recipe_base") and isinstance(value, str):
        return os.path.realpath(value)
    return value


def _file_name(fingerprint: dict[str, Any] | None) -> str:
    return fingerprint["path"] if fingerprint else "(none: a split of the training file)"


class LightbertCLI(LightningCLI):
    """The fit/validate/test commands. ``running`` is the instance whose subcommand runs (its constructor runs it),
    so a SIGTERM caught outside can find its checkpoint callback."""

    running: LightbertCLI | None = None

    def __init__(self, args: list[str]) -> None:
        self._resumed_step: int | None = None
        self._resumed_epoch = 0
        self._resumed_run: ResumedRun | None = None
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
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        ckpt_path = parser._option_string_actions.get("--ckpt_path")
        if ckpt_path is not None:  # Lightning's help offers URLs and keywords (best, last, registry) lightbert refuses
            ckpt_path.help = CKPT_PATH_HELP.get(subcommand, ckpt_path.help)
        return parser

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
            if self.subcommand in ("validate", "test"):
                self.datamodule.use_recorded_files(checkpoint.section, str(self.subcommand), checkpoint.path)
                if self.datamodule.recorded_files_note and rank_zero_only.rank == 0:  # type: ignore[attr-defined]
                    print(self.datamodule.recorded_files_note)
        self.datamodule.setup(self.subcommand)
        self.model.preflight(self.datamodule, checkpoint, str(self.subcommand))
        if self.subcommand == "fit":
            self._fit_settings_to_data()
            if checkpoint is not None:
                self._check_resume_options(checkpoint)
            if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
                print("\n".join([*self.datamodule.describe(), *self.model.head_notes]))
        if self.subcommand == "fit" and self.model.loss_weights and rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            print(describe_class_weights(str(self.model.task), list(self.model.labels or []), self.model.loss_weights))
        self._check_monitor()
        self._check_evaluation_dir()
        trainer_config = self._get(self.config_init, "trainer", default={})
        clip = trainer_config.get("gradient_clip_val")
        if clip is not None and not clip >= 0:  # Lightning would clip every gradient to nothing
            raise LightbertError(
                f"--trainer.gradient_clip_val must be 0 (no clipping) or more, not {clip}",
                "pass a positive limit, e.g. --trainer.gradient_clip_val 1.0",
            )
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
            # A run directory for training (a resumed run's own); evaluating a checkpoint writes nothing.
            root = config.get("default_root_dir") or "runs"
            kwargs["logger"] = default_loggers(root, self._resumed_run) if self.subcommand == "fit" else False
            if self._resumed_run is not None:
                self.save_config_kwargs["overwrite"] = True  # the run's config.yaml, now with this run's options
                hide_warnings(RESUME_WARNINGS)
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, progress_bar()]
        trainer = super().instantiate_trainer(**kwargs)
        if self._resumed_step is not None and self.subcommand == "fit" and trainer.is_global_zero:
            where = trainer.log_dir or "no run directory"
            how = "continuing its run directory" if self._resumed_run is not None else "in a new run directory"
            print(f"resuming at epoch {self._resumed_epoch}, step {self._resumed_step}, {how}: {shown_path(where)}")
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
        self._resumed_epoch = int((source.checkpoint or {}).get("epoch", 0))
        if self.subcommand == "fit":
            self._check_resume_layout(source)
            if self._get(self.config_init, "trainer", default={}).get("logger") in (None, True):
                self._resumed_run = resumed_run(ckpt_path, source.checkpoint or {})
        return source

    def _check_resume_options(self, source: ModelSource) -> None:
        """Resuming continues the run the checkpoint was taken from: options that would change what is trained
        (and the contents of its data files) must be the checkpoint's. How long to train, where to log and how to
        evaluate may change."""
        import yaml

        recorded = yaml.safe_load(source.section.get("training_config") or "") or {}
        if not isinstance(recorded, dict):
            return
        changed = []
        for option in RESUME_MUST_MATCH:
            section, _, name = option.rpartition(".")
            options = recorded.get(section) if section else recorded
            if not isinstance(options, dict) or name not in options:
                continue  # not recorded (an older checkpoint): nothing to compare with
            before, now = options[name], self._get(self.config, option)
            if _normal(option, before) != _normal(option, now):
                changed.append((option, before, now))
        files = source.section.get("data_files")
        if isinstance(files, dict):
            own = self.datamodule.file_fingerprints()
            for role in ("train", "validation"):
                before, now = files.get(role), own.get(role)
                if (before is None) != (now is None):
                    changed.append((f"data.{role}", _file_name(before), _file_name(now)))
                elif before and now and (before["size"], before["sha256"]) != (now["size"], now["sha256"]):
                    changed.append((f"data.{role}", before["path"], f"{now['path']} (other contents)"))
        if changed:
            run = self._resumed_run.directory if self._resumed_run is not None else Path(source.path).parent.parent
            config = run / "config.yaml"
            listed = ", ".join(f"--{option} {now} (the run's: {before})" for option, before, now in changed)
            raise LightbertError(
                f"{source.path} cannot resume with options that change what is trained: {listed}",
                f"resume with the run's own options: lightbert fit --config {shown_path(config)} --ckpt_path"
                f" {source.path}"
                if config.is_file()
                else "resume with the run's own options (its config.yaml)",
            )

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
        callback: Any = trainer.checkpoint_callback
        if self._resumed_step is not None and trainer.global_step == self._resumed_step:
            if isinstance(callback, Checkpointing) and callback.validations_run:
                print(f"the run had stopped during its validation at step {trainer.global_step}: validated again")
            print(
                f"the run is already complete after {trainer.current_epoch} epoch(s), step {trainer.global_step}:"
                " nothing trained (raise --trainer.max_epochs or --trainer.max_steps to train further)"
            )
        else:
            for stopper in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(stopper, StopEarly) and stopper.stop_message:
                    print(stopper.stop_message)
            if self.model.thresholds:
                picked = ", ".join(f"{name} {t:.3f}" for name, t in self.model.thresholds.items())
                print(f"thresholds picked on the validation data (at the latest validation): {picked}")
        if not isinstance(callback, Checkpointing):
            print(summarize_metrics(trainer.callback_metrics, "val_"))
            return
        for line in self._checkpoint_summary(callback):
            print(line)
        chosen = callback.best_model_path or callback.last_model_path
        if chosen and self._get(self.config, "evaluation_dir", default=None):
            from lightbert.loader import load

            self._write_evaluation(load(chosen))

    @staticmethod
    def _checkpoint_summary(callback: Checkpointing) -> list[str]:
        """The best and the last checkpoint, each with its epoch, step and validation metrics."""
        lines = []
        best = callback.best_model_path
        if best:
            alias = callback.best_alias_path
            path = best if alias is None or not os.path.isfile(alias) else f"{alias} ({os.path.basename(best)})"
            lines.append(describe_checkpoint("best", path, callback.best_details.get(best), callback.monitor))
        elif callback.monitor:
            lines.append(f"best: (none: no validation measured {callback.monitor})")
        if callback.last_model_path:
            lines.append(describe_checkpoint("last", callback.last_model_path, callback.last_details, callback.monitor))
        return lines

    def after_validate(self) -> None:
        if self.trainer.is_global_zero:
            print(summarize_metrics(self.trainer.callback_metrics, "val_"))

    def after_test(self) -> None:
        if self.trainer.is_global_zero:
            print(summarize_metrics(self.trainer.callback_metrics, "test_"))
            if self._get(self.config, "evaluation_dir", default=None):
                self._write_evaluation(self.model.classifier())


# -- Lightning's lines a lightbert user cannot act on ---------------------------------------------------------------
# Hidden here, in one place; every other warning Lightning gives is shown. Each is a regular expression that a warning's
# message starts with, and the reason there is nothing to be done about it.
UNACTIONABLE_WARNINGS = (
    # lightbert hands LightningCLI the command line itself
    r".*LightningCLI's args parameter",
    # torch deprecates a class (torch.utils._pytree.LeafSpec) that Lightning's data loading uses
    r".*LeafSpec",
    # lightbert's data module restores the position in the epoch itself (its state_dict)
    r".*your dataloader is not resumable",
    # an epoch of fewer batches than Trainer(log_every_n_steps=50): the interval counts on across epochs, and every
    # validation is logged and summarised whatever it is
    r".*The number of training batches \(\d+\) is smaller than the logging interval",
)
# validate and test restore a fit checkpoint without fit's callbacks (its checkpointing and early stopping, whose
# states only training uses), as they should
EVALUATION_WARNINGS = (r".*when using `ckpt_path`, callbacks used to create the checkpoint need to be provided",)
# a resumed run writes on into its own checkpoint directory
RESUME_WARNINGS = (r".*Checkpoint directory .* exists and is not empty",)
# Lightning's advertisements for its cloud services (the litlogger and litmodels packages), logged as information
ADVERTISEMENTS = ("💡 Tip:", "pypi.org/project/litlogger", "pypi.org/project/litmodels")


def hide_warnings(patterns: tuple[str, ...]) -> None:
    """Hide the warnings whose messages match ``patterns`` (one of the tuples above), for the rest of the command."""
    for pattern in patterns:
        warnings.filterwarnings("ignore", message=pattern)


class _HideAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(advertisement in message for advertisement in ADVERTISEMENTS)


_HIDE_ADVERTISEMENTS = _HideAdvertisements()


def run(args: list[str]) -> None:
    """Run ``lightbert fit|validate|test`` (``args`` starts with the subcommand)."""
    with warnings.catch_warnings():  # the command's own filters end with it
        hide_warnings(UNACTIONABLE_WARNINGS)
        if args and args[0] in ("validate", "test"):
            hide_warnings(EVALUATION_WARNINGS)
        logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_HIDE_ADVERTISEMENTS)
        logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
        try:
            LightbertCLI(args)
        except SIGTERMException:
            trainer = getattr(LightbertCLI.running, "trainer", None)
            callback = getattr(trainer, "checkpoint_callback", None)
            path = getattr(callback, "saved_on_sigterm", None) or getattr(callback, "last_model_path", None)
            raise Terminated(path) from None
