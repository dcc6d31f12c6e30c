"""The ``lightbert`` command: a thin layer over the Python API.

``lightbert fit|validate|test`` are LightningCLI subcommands (``--config``, ``--model.*``, ``--data.*``,
``--trainer.*``, ``--checkpoint.*``, ``--ckpt_path``, ``--print_config``). Every user error ends with exit code 2
and one line on stderr: ``error: <what is wrong> (<what to do>)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

from lightbert.errors import LightbertError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
COMMANDS = (*LIGHTNING_SUBCOMMANDS, "predict", "export", "inspect")
USAGE = """usage: lightbert {fit,validate,test,predict,export,inspect} [options]

  fit        fine-tune a classifier (no options: the bundled MiniLM on a bundled SST-2 sample)
  validate   evaluate a checkpoint on the validation data (--ckpt_path)
  test       evaluate a checkpoint on --data.test (--ckpt_path)
  predict    label texts with a checkpoint or a Hugging Face model directory
  export     write a checkpoint as a Hugging Face directory that transformers.pipeline loads
  inspect    say what a checkpoint or model directory is and holds

'lightbert COMMAND --help' lists the options of each."""


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _parser(command: str, description: str):
    """A jsonargparse parser whose errors are one line, like every other user error."""
    from jsonargparse import ArgumentParser

    class Parser(ArgumentParser):
        def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
            raise LightbertError(_one_line(message), f"run 'lightbert {command} --help' for the options")

    return Parser(prog=f"lightbert {command}", description=description, env_prefix="LIGHTBERT", default_env=False)


def run_predict(args: list[str]) -> None:
    from lightbert.loader import load
    from lightbert.predict import count_rows, iter_text_chunks, predict_stream, resolve_device, to_jsonl, write_atomically

    parser = _parser("predict", "Label texts with a fine-tuned classifier. Output: JSON Lines, one object per text, in input order.")
    parser.add_argument("model", help="a lightbert .ckpt, a Hugging Face model directory, or a Lightning checkpoint (with --base)")
    parser.add_argument("texts", nargs="*", default=[], help="texts to label (or use --input)")
    parser.add_argument("--input", type=str | None, default=None, help="file of texts: .txt (one per line), .csv, .tsv, .jsonl or .parquet")
    parser.add_argument("--output", type=str | None, default=None, help="write JSON Lines here instead of stdout")
    parser.add_argument("--text_column", type=int | str | None, default=None, help="column with the text (default: text/sentence/..., else the first)")
    parser.add_argument("--text_pair_column", type=int | str | None, default=None, help="column with the second text, for models trained on pairs")
    parser.add_argument("--base", type=str | None, default=None, help="HF directory with the config and tokenizer, for a Lightning checkpoint from the common recipe")
    parser.add_argument("--batch_size", type=int, default=64, help="texts per forward pass")
    parser.add_argument("--threshold", type=float, default=0.5, help="multi-label: probability from which a label is predicted")
    parser.add_argument("--precision", type=Literal["fp32", "bf16", "int8"], default="fp32", help="fp32 (exact), bf16 (faster on GPUs and CPUs with AMX; slower on others) or int8 (CPUs: faster, approximate: labels agree with fp32 on about 199 of 200 SST-2 sentences)")
    parser.add_argument("--device", type=str, default="auto", help="auto (the GPU if there is one, else the CPU; the CPU for int8), cpu, cuda, cuda:N or mps")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace an existing --output file")
    parser.add_argument("--trust_checkpoint", type=bool, default=False, help="unpickle the checkpoint fully; only for a file you made yourself")
    config = parser.parse_args(args)
    device = resolve_device(config.device, config.precision)  # checked before the model loads
    if bool(config.texts) == bool(config.input):
        raise LightbertError("give texts as arguments or --input FILE (one of the two)", "e.g. lightbert predict MODEL \"a great film\"")
    if config.output and Path(config.output).exists() and not config.overwrite:
        raise LightbertError(f"output file exists: {config.output}", "choose another path or pass --overwrite")
    classifier = load(config.model, config.base, trust_checkpoint=config.trust_checkpoint).to(device).set_precision(config.precision)
    if config.input:
        chunks = iter_text_chunks(config.input, config.text_column, config.text_pair_column, pairs=classifier.trained_on_pairs)
        total = count_rows(config.input)
    else:
        if classifier.trained_on_pairs:
            raise LightbertError("this model was trained on text pairs", "give --input FILE with --text_pair_column")
        chunks, total = iter([(list(config.texts), None)]), len(config.texts)
    from tqdm import tqdm

    # Shown on a terminal only (disable=None): texts/s and ETA; pipes and logs stay clean.
    with tqdm(total=total, unit="text", file=sys.stderr, disable=None, dynamic_ncols=True, leave=False) as progress:
        records = predict_stream(classifier, chunks, batch_size=config.batch_size, threshold=config.threshold, progress=progress)
        if config.output:
            count = 0

            def counted():
                nonlocal count
                for record in records:
                    count += 1
                    yield record

            write_atomically(config.output, to_jsonl(counted()), overwrite=config.overwrite)
        else:
            count = 0
            for line in to_jsonl(records):
                sys.stdout.write(line)
                count += 1
    if classifier.total_truncated:
        print(f"note: {classifier.total_truncated} of {count} texts were longer than {classifier.max_length} tokens and were truncated", file=sys.stderr)
    if config.output:
        print(f"wrote {count} predictions to {config.output}", file=sys.stderr)


def run_export(args: list[str]) -> None:
    from lightbert.export import export

    parser = _parser("export", "Write a checkpoint as a Hugging Face directory (model.safetensors, config.json with labels, tokenizer, model card), verified by reloading it with transformers.")
    parser.add_argument("checkpoint", help="a lightbert .ckpt, a Lightning checkpoint (with --base) or a Hugging Face directory")
    parser.add_argument("out_dir", help="the directory to write (must be empty or absent unless --overwrite)")
    parser.add_argument("--base", type=str | None, default=None, help="HF directory with the config and tokenizer, for a Lightning checkpoint from the common recipe")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace a non-empty out_dir (only after the new export is verified)")
    parser.add_argument("--trust_checkpoint", type=bool, default=False, help="unpickle the checkpoint fully; only for a file you made yourself")
    config = parser.parse_args(args)
    result = export(config.checkpoint, config.out_dir, base=config.base, overwrite=config.overwrite, trust_checkpoint=config.trust_checkpoint)
    labels = ", ".join(result["labels"]) if result["labels"] else "regression"
    print(f"exported to {result['directory']}: {', '.join(result['files'])}")
    print(f"labels: {labels}; verified: max logit difference {result['max_logit_difference']:.1e} after reloading with transformers")


def run_inspect(args: list[str]) -> None:
    from lightbert.describe import describe, format_description

    parser = _parser("inspect", "Say what a checkpoint or model directory is and holds, without running anything from it.")
    parser.add_argument("path", help="a .ckpt file or a Hugging Face model directory")
    parser.add_argument("--json", type=bool, default=False, help="print JSON instead of text")
    parser.add_argument("--trust_checkpoint", type=bool, default=False, help="unpickle the checkpoint fully; only for a file you made yourself")
    config = parser.parse_args(args)
    info = describe(config.path, trust_checkpoint=config.trust_checkpoint)
    print(json.dumps(info, indent=2, default=str) if config.json else format_description(info))


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

    from lightbert.callbacks import Checkpointing
    from lightbert.checkpoint import read_checkpoint
    from lightbert.datamodule import ClassificationDataModule
    from lightbert.model import SequenceClassifier
    from lightbert.safety import check_writable_directory

    class OneLineErrorParser(LightningArgumentParser):
        """Parse errors become ``error: ... (...)`` on one line, like every other user error."""

        def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
            command = self.prog.split()[-1] if self.prog else "fit"
            raise LightbertError(_one_line(message), f"run 'lightbert {command} --help' for the options")

    class LightbertCLI(LightningCLI):
        running: LightningCLI | None = None  # the instance whose subcommand runs (its constructor runs it)

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
            parser.add_argument("--trust_checkpoint", type=bool, default=False,
                                help="Unpickle --ckpt_path fully. Only for a checkpoint you made yourself: a pickle can run any code.")

        def _parse_ckpt_path(self) -> None:
            # LightningCLI would feed the checkpoint's hyper-parameters back into the config, which lets a file
            # choose classes to instantiate. A checkpoint here only restores state; the command line decides.
            return

        def instantiate_classes(self) -> None:
            # Check everything a user can get wrong before the Trainer exists (and before it prints anything):
            # the data (files, columns, labels), the output directory and the checkpoint to resume from.
            instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes  # renamed in 4.49
            self.config_init = instantiate(self.config)
            type(self).running = self
            self.datamodule = self._get(self.config_init, "data")
            self.model = self._get(self.config_init, "model")
            self.datamodule.setup(self.subcommand)
            self.model.preflight(self.datamodule)
            trainer_config = self._get(self.config_init, "trainer", default={})
            if self.subcommand == "fit":
                check_writable_directory(trainer_config.get("default_root_dir") or "runs", "output directory")
                dirpath = self._get(self.config, "checkpoint.dirpath")
                if dirpath:
                    check_writable_directory(dirpath, "checkpoint directory")
            self._check_ckpt_path()
            self.trainer = self.instantiate_trainer()

        def instantiate_trainer(self, **kwargs: Any):
            config = self._get(self.config_init, "trainer", default={})
            if config.get("logger") in (None, True):
                kwargs["logger"] = default_loggers(config.get("default_root_dir") or "runs")
            return super().instantiate_trainer(**kwargs)

        def _check_ckpt_path(self) -> None:
            self._resumed_step = None
            ckpt_path = self._get(self.config, "ckpt_path")
            trust = bool(self._get(self.config, "trust_checkpoint"))
            # Lightning's own load must be exactly as strict as ours: weights_only unless the user trusts the file.
            self.config_init[self.subcommand]["weights_only"] = not trust
            if self._get(self.config, "weights_only") is False and not trust:
                raise LightbertError("--weights_only false would unpickle the checkpoint fully", "pass --trust_checkpoint true for a file you made yourself")
            if not ckpt_path:
                return
            checkpoint = read_checkpoint(ckpt_path, trust=trust)
            if "state_dict" not in checkpoint:
                raise LightbertError(f"{ckpt_path} holds no model weights (state_dict)", "give a .ckpt written by lightbert fit")
            if self.subcommand == "fit" and not ("optimizer_states" in checkpoint and "loops" in checkpoint):
                raise LightbertError(f"{ckpt_path} is not resumable: it has no optimizer or loop state", "resume from a checkpoint written by lightbert fit")
            self._resumed_step = int(checkpoint.get("global_step", 0))

        def _before(self) -> None:
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
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertising())
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    cli_class = _make_cli_class()
    try:
        cli_class(args)
    except SIGTERMException:
        trainer = getattr(cli_class.running, "trainer", None)
        raise Terminated(getattr(trainer, "checkpoint_callback", None)) from None


class Terminated(Exception):
    """Training stopped by SIGTERM; the checkpoint callback saved last.ckpt on the way out."""

    def __init__(self, callback: Any) -> None:
        super().__init__("SIGTERM")
        self.path = getattr(callback, "saved_on_sigterm", None) or getattr(callback, "last_model_path", None)


def _quiet_transformers() -> None:
    # Weight-loading progress bars and "newly initialized" notices are noise on a command line; errors still show.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        command = argv[0]
        _quiet_transformers()
        if command in LIGHTNING_SUBCOMMANDS:
            run_lightning(argv)
        elif command == "predict":
            run_predict(argv[1:])
        elif command == "export":
            run_export(argv[1:])
        elif command == "inspect":
            run_inspect(argv[1:])
        else:
            raise LightbertError(f"unknown command {command!r}", "use one of: " + ", ".join(COMMANDS))
        return 0
    except LightbertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Terminated as stop:
        where = f"saved {stop.path}; resume with --ckpt_path {stop.path}" if stop.path else "no checkpoint was saved"
        print(f"error: stopped by SIGTERM ({where})", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted (run again with --ckpt_path to resume from the last checkpoint)", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a bad input: say so, keep it short unless asked for the traceback
        if os.environ.get("LIGHTBERT_DEBUG"):
            raise
        print(f"error: internal error {type(err).__name__}: {_one_line(str(err))[:300]} (please report it; set LIGHTBERT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
