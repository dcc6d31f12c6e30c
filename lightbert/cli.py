"""The ``lightbert`` command: a thin layer over the Python API.

``lightbert fit|validate|test`` are LightningCLI subcommands (``--config``, ``--model.*``, ``--data.*``,
``--trainer.*``, ``--checkpoint.*``, ``--ckpt_path``, ``--print_config``). Every user error ends with exit code 2
and one line on stderr: ``error: <what is wrong> (<what to do>)``.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from lightbert.errors import LightbertError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
USAGE = """usage: lightbert {fit,validate,test} [options]

  fit        fine-tune a classifier (no options: the bundled MiniLM on a bundled SST-2 sample)
  validate   evaluate a checkpoint on the validation data (--ckpt_path)
  test       evaluate a checkpoint on --data.test (--ckpt_path)

'lightbert SUBCOMMAND --help' lists the options of each."""


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


class _DropAdvertising(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _make_cli_class():
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from lightbert.checkpoint import Checkpointing, read_checkpoint
    from lightbert.data import ClassificationDataModule
    from lightbert.model import SequenceClassifier

    class OneLineErrorParser(LightningArgumentParser):
        """Parse errors become ``error: ... (...)`` on one line, like every other user error."""

        def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
            text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
            command = self.prog.split()[-1] if self.prog else "fit"
            raise LightbertError(text, f"run 'lightbert {command} --help' for the options")

    class LightbertCLI(LightningCLI):
        def __init__(self, args: list[str]) -> None:
            super().__init__(
                SequenceClassifier,
                ClassificationDataModule,
                args=args,
                seed_everything_default=42,
                trainer_defaults={"max_epochs": 2, "default_root_dir": "runs"},
                parser_kwargs={"description": "lightbert: fine-tune BERT-family sequence classifiers."},
                auto_configure_optimizers=False,
                parser_class=OneLineErrorParser,
            )

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_lightning_class_args(Checkpointing, "checkpoint")
            parser.set_defaults({
                "checkpoint.monitor": "val_loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch={epoch}-step={step}-val_loss={val_loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            })
            parser.link_arguments("model.base", "data.tokenizer")

        def _parse_ckpt_path(self) -> None:
            # LightningCLI would feed the checkpoint's hyper-parameters back into the config, which lets a file
            # choose classes to instantiate. A checkpoint here only restores state; the command line decides.
            return

        def instantiate_trainer(self, **kwargs: Any):
            config = self._get(self.config_init, "trainer", default={})
            if config.get("logger") in (None, True):
                kwargs["logger"] = default_loggers(config.get("default_root_dir") or "runs")
            return super().instantiate_trainer(**kwargs)

        def _before(self) -> None:
            self._resumed_step = None
            ckpt_path = self._get(self.config, "ckpt_path")
            if ckpt_path:
                checkpoint = read_checkpoint(ckpt_path)  # refuses anything that is not weights_only-safe
                if "state_dict" not in checkpoint:
                    raise LightbertError(f"{ckpt_path} holds no model weights (state_dict)", "give a .ckpt written by lightbert fit")
                if "optimizer_states" not in checkpoint and self.subcommand == "fit":
                    raise LightbertError(f"{ckpt_path} has no optimizer state, so training cannot resume from it", "resume from a checkpoint written by lightbert fit")
                self._resumed_step = int(checkpoint.get("global_step", 0))
                del checkpoint
            parser = self._parser(self.subcommand)
            self.model.training_config = parser.dump(self.config[self.subcommand], skip_none=False)

        before_fit = before_validate = before_test = _before

        def after_fit(self) -> None:
            trainer = self.trainer
            if self._resumed_step is not None and trainer.global_step == self._resumed_step:
                print(
                    f"the run is already complete at epoch {trainer.current_epoch}, step {trainer.global_step}: nothing"
                    " trained (raise --trainer.max_epochs or --trainer.max_steps to train further)"
                )
                return
            print(summarize_metrics(trainer.callback_metrics, "val_"))
            callback = trainer.checkpoint_callback
            if callback is not None:
                print(f"best checkpoint: {callback.best_model_path or '(none)'}")
                print(f"last checkpoint: {callback.last_model_path or '(none)'}")

        def after_validate(self) -> None:
            print(summarize_metrics(self.trainer.callback_metrics, "val_"))

        def after_test(self) -> None:
            print(summarize_metrics(self.trainer.callback_metrics, "test_"))

    return LightbertCLI


def summarize_metrics(metrics: dict[str, Any], prefix: str) -> str:
    """One line: ``validation: accuracy 0.8733, f1_macro 0.8710, loss 0.3121``."""
    parts = []
    for name, value in sorted(metrics.items()):
        if name.startswith(prefix):
            number = float(value)
            if math.isfinite(number):
                parts.append(f"{name[len(prefix):]} {number:.4f}")
    stage = "validation" if prefix == "val_" else "test"
    return f"{stage}: {', '.join(parts) if parts else 'no metrics'}"


def run_lightning(args: list[str]) -> None:
    """Run ``lightbert fit|validate|test`` with LightningCLI."""
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertising())
    _make_cli_class()(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        command = argv[0]
        if command in LIGHTNING_SUBCOMMANDS:
            run_lightning(argv)
            return 0
        raise LightbertError(f"unknown command {command!r}", "use one of: " + ", ".join(LIGHTNING_SUBCOMMANDS))
    except LightbertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (run again with --ckpt_path to resume from the last checkpoint)", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
