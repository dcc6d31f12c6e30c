"""The ``lightbert`` command: a thin layer over the Python API.

``fit``, ``validate`` and ``test`` are LightningCLI subcommands (``lightbert.lightning_cli``); ``predict``,
``evaluate``, ``serve``, ``export`` and ``inspect`` parse their options here and call ``lightbert.load``,
``write_predictions``, ``evaluate_file``, ``serve``, ``export`` and ``inspect_model``. Every user error ends with
exit code 2 and one line on stderr: ``error: <what is wrong> (<what to do>)``; a bug with exit code 1 and ``error:
internal error ...``. Lightning is imported only by the training commands, so ``predict`` starts quickly.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from lightbert.arguments import OneLineErrors, boolean_options, expand_flags, positionals_first
from lightbert.errors import LightbertError, Terminated, note, one_line

USAGE = """usage: lightbert {fit,validate,test,tune,predict,evaluate,serve,export,inspect} [options]

  fit        fine-tune a classifier (no options: the bundled MiniLM on a bundled SST-2 sample)
  validate   evaluate a checkpoint on the validation data (--ckpt_path)
  test       evaluate a checkpoint on --data.test (--ckpt_path)
  tune       search fit's hyper-parameters (Optuna: TPE, median pruning, resumable)
  predict    label texts with a checkpoint or a Hugging Face model directory
  evaluate   score a model on a labelled file: a report with numbers, figures and the worst errors
  serve      serve a model over HTTP (batched), with a page to try it
  export     write a checkpoint as a Hugging Face directory that transformers.pipeline loads
  inspect    say what a checkpoint or model directory is and holds

'lightbert COMMAND --help' lists the options of each."""

MODEL_HELP = "a lightbert .ckpt, a Hugging Face model directory, or a recipe checkpoint (with --base)"
BASE_HELP = "Hugging Face directory with the config and tokenizer, for a recipe checkpoint"
TRUST_HELP = "unpickle the checkpoint fully; only for a file you made yourself (a pickle can run any code)"


def parser(command: str, description: str) -> Any:
    """A jsonargparse parser whose errors are one line, like every other user error."""
    from jsonargparse import ArgumentParser

    class Parser(OneLineErrors, ArgumentParser):
        pass

    return Parser(prog=f"lightbert {command}", description=description, default_env=False)


def add_column_options(p: Any) -> None:
    p.add_argument(
        "--text_column",
        type=int | str | None,
        default=None,
        help="column with the text, by name or 0-based position (default: the model's training column when the file"
        " has it, else text/sentence/..., else the first)",
    )
    p.add_argument(
        "--text_pair_column",
        type=int | str | None,
        default=None,
        help="column with the second text, for models trained on pairs (default: the model's training column when"
        " the file has it, else sentence2/text_pair/...)",
    )


def add_model_options(p: Any, batch_help: str = "texts per forward pass") -> None:
    """The options of every command that loads a model to predict with: where its config comes from, how it runs."""
    p.add_argument("--base", type=str | None, default=None, help=BASE_HELP)
    p.add_argument("--batch_size", type=int, default=64, help=batch_help)
    p.add_argument(
        "--threshold",
        type=float | None,
        default=None,
        help="multi-label: probability from which a label is predicted (default: the model's, else 0.5)",
    )
    p.add_argument(
        "--precision",
        type=Literal["fp32", "bf16", "int8"],
        default="fp32",
        help="fp32 (exact), bf16 (faster on GPUs and CPUs with AMX; slower on others)"
        " or int8 (CPUs: faster, approximate)",
    )
    p.add_argument(
        "--device",
        type=str,
        default="auto",
        help="auto (the GPU if there is one, else the CPU; the CPU for int8), cpu, cuda, cuda:N or mps",
    )
    p.add_argument("--trust_checkpoint", type=bool, default=False, help=TRUST_HELP)
    add_long_text_options(p)


def add_process_options(p: Any, output: str) -> None:
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="processes on this machine that share the input file (each takes every N-th chunk of 4,096 texts; the"
        f" first writes {output})",
    )
    p.add_argument(
        "--num_nodes",
        type=int,
        default=1,
        help="machines running --devices processes each, started by torchrun or SLURM",
    )


def add_long_text_options(p: Any) -> None:
    p.add_argument(
        "--long_texts",
        type=Literal["truncate", "chunk"],
        default="truncate",
        help="a text longer than the model's limit: truncate it, or chunk it into overlapping windows whose logits"
        ' are combined (its record says how many: "windows")',
    )
    p.add_argument(
        "--stride",
        type=int | None,
        default=None,
        help="chunk: tokens each window shares with the previous one (default: a quarter of the limit)",
    )
    p.add_argument(
        "--combine_windows", type=Literal["mean", "max"], default="mean", help="chunk: mean or max of windows' logits"
    )


def long_texts_of(config: Any) -> Any:
    """The ``LongTexts`` of ``--long_texts``/``--stride``/``--combine_windows`` (checked against the model once it
    is loaded)."""
    from lightbert.classifier import LongTexts

    return LongTexts(config.long_texts, config.stride, config.combine_windows)


def open_classifier(config: Any, device: str | None = None) -> Any:
    """The classifier of MODEL with the command's ``--base/--trust_checkpoint/--device/--precision`` and long-text
    options; says in one line when bf16 will be slower than fp32 on this CPU (and carries on)."""
    from lightbert.devices import warn_if_bf16_is_slow
    from lightbert.loader import load

    classifier = load(config.model, config.base, config.trust_checkpoint, device or config.device, config.precision)
    classifier.read_long_texts(config.long_texts, config.stride, config.combine_windows)
    if config.precision == "bf16":
        warn_if_bf16_is_slow(classifier.device)
    return classifier


def parse(p: Any, args: list[str]) -> Any:
    """Parse ``args``, boolean options reading as flags too."""
    return p.parse_args(positionals_first(expand_flags(args, boolean_options(p._actions)), p._actions))


def run_predict(args: list[str]) -> None:
    p = parser(
        "predict",
        "Label texts with a fine-tuned classifier. Output: JSON Lines, one object per text, in order; or, by"
        " --output's extension, the input's rows with the predictions' columns.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("texts", nargs="*", default=[], help="texts to label (or use --input)")
    p.add_argument(
        "--input",
        type=str | None,
        default=None,
        help="file of texts: .txt (one per line), .csv, .tsv, .jsonl or .parquet; - reads lines of text from"
        " standard input",
    )
    p.add_argument(
        "--output",
        type=str,
        default="-",
        help="where the predictions go, by extension: .jsonl (one object per text), .csv, .tsv or .parquet (the"
        " input's rows with label, score and prob_<label> columns); - is standard output (JSON Lines). Files are"
        " written atomically",
    )
    p.add_argument("--overwrite", type=bool, default=False, help="replace an existing --output file")
    add_column_options(p)
    add_model_options(p)
    add_process_options(p, "--output in input order")
    config = parse(p, args)
    # Imported once the options are parsed: --help and a bad option answer at once, without loading torch.
    from lightbert.classifier import check_threshold
    from lightbert.predict import STDOUT, check_output_file, output_format, write_predictions
    from lightbert.tables import (
        STDIN,
        RowChunk,
        Table,
        check_input_file,
        columns_for_model,
        count_rows,
        iter_row_chunks,
    )

    if config.threshold is not None:
        check_threshold(config.threshold)
    if config.batch_size < 1:
        raise LightbertError(f"batch_size must be at least 1, not {config.batch_size}", "pass --batch_size 64")
    if not config.input and (config.text_column is not None or config.text_pair_column is not None):
        raise LightbertError("--text_column and --text_pair_column name columns of --input", "give --input FILE")
    if config.input == STDIN and (config.text_column is not None or config.text_pair_column is not None):
        raise LightbertError(
            "--input - reads lines of text, which have no columns", "leave out --text_column and --text_pair_column"
        )
    if bool(config.texts) == bool(config.input):
        raise LightbertError(
            "give texts as arguments or --input FILE (one of the two)", 'e.g. lightbert predict MODEL "a great film"'
        )
    fmt = output_format(config.output)
    if config.input:
        check_input_file(config.input)
    if config.output != STDOUT:
        check_output_file(config.output, config.overwrite, [config.input, config.model])
    if config.devices < 1 or config.num_nodes < 1:
        raise LightbertError("--devices and --num_nodes must be at least 1", "pass --devices 2")
    if config.devices * config.num_nodes > 1 or "WORLD_SIZE" in os.environ:
        return predict_in_group(config, ["predict", *args])
    classifier = open_classifier(config)
    if config.input:
        (text_column, text_pair_column, _), said = columns_for_model(
            config.input, config.text_column, config.text_pair_column, None, classifier.info.data, classifier.paired
        )
        if said:
            note(said)
        chunks: Any = iter_row_chunks(
            config.input, text_column, text_pair_column, classifier.paired, same_columns=fmt != "jsonl"
        )
        total = None if config.input == STDIN else count_rows(config.input)
    else:
        if classifier.paired:
            raise LightbertError("this model was trained on text pairs", "give --input FILE with --text_pair_column")
        texts = list(config.texts)
        chunks, total = iter([RowChunk(texts, None, Table({"text": texts}))]), len(texts)
    output = None if config.output == STDOUT else config.output
    summary = write_predictions(
        classifier, chunks, output, total, config.batch_size, config.threshold, config.overwrite, [config.input]
    )
    if summary.truncated:
        print(
            f"note: {summary.truncated} of {summary.count} texts were longer than {classifier.max_length} tokens"
            " and were truncated",
            file=sys.stderr,
        )
    if output:
        print(f"wrote {summary.count} predictions to {output}", file=sys.stderr)


def predict_in_group(config: Any, command: list[str]) -> None:
    """``lightbert predict --input FILE --output FILE`` shared by ``--devices x --num_nodes`` processes."""
    from lightbert.distributed import group
    from lightbert.predict import STDOUT, write_predictions_in_group
    from lightbert.tables import STDIN, columns_for_model

    if config.input in (None, STDIN) or config.output == STDOUT:
        raise LightbertError("several processes predict a file into a file", "give --input FILE and --output FILE")
    with group(command, config.devices, config.num_nodes) as processes:
        device = config.device
        if device == "auto" and torch_has_cuda() and config.precision != "int8":
            device = f"cuda:{processes.rank % config.devices}"
        elif config.devices > 1:  # processes on one machine share its cores
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.devices))
        classifier = open_classifier(config, device)
        (text_column, text_pair_column, _), said = columns_for_model(
            config.input, config.text_column, config.text_pair_column, None, classifier.info.data, classifier.paired
        )
        if said:
            note(said)
        summary = write_predictions_in_group(
            processes, classifier, config.input, config.output, text_column, text_pair_column,
            config.batch_size, config.threshold, config.overwrite,
        )  # fmt: skip
    if processes.is_first:
        if summary.truncated:
            note(
                f"note: {summary.truncated} of {summary.count} texts were longer than {classifier.max_length} tokens"
                " and were truncated"
            )
        note(f"wrote {summary.count} predictions to {config.output} ({processes.world_size} processes)")


def torch_has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def run_evaluate(args: list[str]) -> None:
    p = parser("evaluate", "Evaluate a model on a labelled file: numbers, confusion matrix, calibration, worst errors.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--input", type=str, required=True, help="labelled file: .csv, .tsv, .jsonl or .parquet")
    p.add_argument(
        "--label_column",
        type=int | str | None,
        default=None,
        help="column with the gold label (default: the model's training column when the file has it, else"
        " label/..., else the last); names or ids, lists or delimited names for multi-label, numbers for regression",
    )
    p.add_argument(
        "--label_delimiter",
        type=str | None,
        default=None,
        help="multi-label: separator of several labels in one cell (default ',')",
    )
    p.add_argument(
        "--header",
        type=bool | None,
        default=None,
        help="whether a CSV/TSV file has a header row (detected when not given)",
    )
    p.add_argument(
        "--output_dir",
        type=str,
        default="evaluation",
        help="directory for report.json, report.md and the figures (written whole, or not at all)",
    )
    p.add_argument("--overwrite", type=bool, default=False, help="replace a non-empty --output_dir")
    p.add_argument("--top_errors", type=int, default=10, help="how many of the worst errors the report lists")
    add_column_options(p)
    add_model_options(p)
    add_process_options(p, "the report")
    config = parse(p, args)
    from lightbert.classifier import check_threshold
    from lightbert.evaluation import check_output_dir, columns_for_evaluation, evaluate_file, write_report
    from lightbert.tables import check_data_file, count_rows

    if config.threshold is not None:
        check_threshold(config.threshold)
    if config.batch_size < 1 or config.top_errors < 0 or config.devices < 1 or config.num_nodes < 1:
        raise LightbertError(
            "--batch_size, --devices and --num_nodes must be at least 1, --top_errors at least 0",
            "e.g. --batch_size 64 --top_errors 10",
        )
    if config.label_delimiter == "":
        raise LightbertError("--label_delimiter is empty", "pass what separates labels, e.g. --label_delimiter ,")
    check_data_file(config.input)
    out = Path(config.output_dir)
    check_output_dir(out, config.overwrite, [config.input, config.model])
    columns = (config.text_column, config.text_pair_column, config.label_column, config.label_delimiter, config.header)
    if config.devices * config.num_nodes > 1 or "WORLD_SIZE" in os.environ:
        return evaluate_in_group(config, ["evaluate", *args], columns)
    classifier = open_classifier(config)
    columns, said = columns_for_evaluation(classifier, config.input, *columns)
    if said:
        note(said)
    from tqdm import tqdm

    with tqdm(total=count_rows(config.input), unit="text", file=sys.stderr, disable=None, leave=False) as progress:
        report = evaluate_file(classifier, config.input, *columns, config.batch_size, config.threshold,
                               config.top_errors, progress)  # fmt: skip
    write_report(report, out, config.overwrite)
    print(report.summary())
    print(f"report: {out / 'report.md'} (numbers in {out / 'report.json'})")


def evaluate_in_group(config: Any, command: list[str], columns: tuple[Any, Any, Any, Any, Any]) -> None:
    """``lightbert evaluate`` shared by ``--devices x --num_nodes`` processes: they predict the file together
    (``predict --devices``), then the first one tallies the predictions against the labels and writes the report."""
    import tempfile

    from lightbert.distributed import broadcast, group
    from lightbert.evaluation import columns_for_evaluation, evaluate_predictions, write_report
    from lightbert.predict import write_predictions_in_group

    with group(command, config.devices, config.num_nodes) as processes:
        if config.devices > 1:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.devices))
        classifier = open_classifier(config)
        columns, said = columns_for_evaluation(classifier, config.input, *columns)
        if said:
            note(said)
        scratch = None
        if processes.is_first:
            scratch = tempfile.mkdtemp(prefix=".lightbert-evaluate-", dir=Path(config.output_dir).resolve().parent)
            processes.cleanup.append(Path(scratch))
        scratch = broadcast(processes, scratch)
        predictions = Path(scratch) / "predictions.jsonl"
        text_column, text_pair_column = columns[0], columns[1]
        write_predictions_in_group(processes, classifier, config.input, predictions, text_column, text_pair_column,
                                   config.batch_size, config.threshold)  # fmt: skip
        if processes.is_first:
            try:
                report = evaluate_predictions(
                    classifier, config.input, predictions, *columns, threshold=config.threshold,
                    top_errors=config.top_errors,
                )  # fmt: skip
                write_report(report, config.output_dir, config.overwrite)
            finally:
                import shutil

                shutil.rmtree(scratch, ignore_errors=True)
            print(report.summary())
            print(f"report: {Path(config.output_dir) / 'report.md'} ({processes.world_size} processes)")


def run_export(args: list[str]) -> None:
    p = parser(
        "export",
        "Write a model as a Hugging Face directory (model.safetensors, config.json with labels, tokenizer, model"
        " card), verified by reloading it with transformers.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("out_dir", help="the directory to write (must be empty or absent unless --overwrite)")
    p.add_argument("--base", type=str | None, default=None, help=BASE_HELP)
    p.add_argument(
        "--overwrite",
        type=bool,
        default=False,
        help="replace a non-empty out_dir (only after the new export is verified)",
    )
    p.add_argument("--trust_checkpoint", type=bool, default=False, help=TRUST_HELP)
    p.add_argument(
        "--report",
        type=str | None,
        default=None,
        help="an evaluation report (report.json or its directory) whose numbers the model card quotes (default: the"
        " newest one written for this model in the run's evaluation/ or ./evaluation/)",
    )
    config = parse(p, args)
    from lightbert.export import export

    result = export(
        config.model,
        config.out_dir,
        base=config.base,
        overwrite=config.overwrite,
        trust_checkpoint=config.trust_checkpoint,
        report=config.report,
    )
    labels = ", ".join(result["labels"]) if result["labels"] else "regression"
    print(f"exported to {result['directory']}: {', '.join(result['files'])}")
    if result["report"]:
        print(f"model card: the evaluation on {result['report']}")
    print(
        f"labels: {labels}; verified: max logit difference {result['max_logit_difference']:.1e}"
        " after reloading with transformers"
    )


def run_inspect(args: list[str]) -> None:
    p = parser("inspect", "Say what a checkpoint or model directory is and holds, without running anything from it.")
    p.add_argument("model", help="a .ckpt file or a Hugging Face model directory")
    p.add_argument("--json", type=bool, default=False, help="print JSON instead of text")
    p.add_argument("--trust_checkpoint", type=bool, default=False, help=TRUST_HELP)
    config = parse(p, args)
    from lightbert.inspection import format_inspection, inspect_model

    info = inspect_model(config.model, trust_checkpoint=config.trust_checkpoint)
    print(json.dumps(info, indent=2, default=str) if config.json else format_inspection(info))


def run_serve(args: list[str]) -> None:
    p = parser(
        "serve",
        'Serve a model over HTTP (LitServe, dynamic batching): POST /predict {"text": ...} or {"texts": [...]},'
        " GET /health, GET /info, and a page to try it at /. Stops on SIGTERM or Ctrl+C after answering the"
        " requests in flight.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument(
        "--host",
        type=str,
        default="127.0.0.1",
        help="127.0.0.1 (this machine only), 0.0.0.0 (every IPv4 interface: reachable from the network) or ::",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port, 1024 to 65535")
    p.add_argument(
        "--max_batch_size",
        type=int,
        default=32,
        help="most requests in one batch: a batch is every request waiting when the model is free (so batches grow"
        " with the load), up to this many",
    )
    p.add_argument(
        "--batch_timeout",
        type=float,
        default=0.01,
        help="seconds a batch may wait for more requests after its first one, under load only (a lone request goes"
        " at once); 0: never wait",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="inference processes, each with its own copy of the model; on a CPU each runs its batches on its share"
        " of the cores, and a lone request on all of them (default: 2 on a CPU with 2 cores or more, else 1)",
    )
    p.add_argument("--max_texts", type=int, default=256, help="most texts one request may send (more: 413)")
    p.add_argument("--max_body_bytes", type=int, default=1_000_000, help="largest request body in bytes (larger: 413)")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds a request may wait for a worker before it is answered 504",
    )
    add_model_options(p, "texts per forward pass (a batch's texts, all requests)")
    config = parse(p, args)
    from lightbert.serve import serve

    serve(
        config.model, host=config.host, port=config.port, base=config.base, max_batch_size=config.max_batch_size,
        batch_timeout=config.batch_timeout, workers=config.workers, precision=config.precision, device=config.device,
        trust_checkpoint=config.trust_checkpoint, batch_size=config.batch_size, threshold=config.threshold,
        max_texts=config.max_texts, max_body_bytes=config.max_body_bytes, timeout=config.timeout,
        long_texts=long_texts_of(config),
    )  # fmt: skip


def run_training(args: list[str]) -> None:
    from lightbert.lightning_cli import run

    run(args)


def run_tune(args: list[str]) -> None:
    from lightbert.tuning import TUNABLE_METRICS, tune

    p = parser(
        "tune",
        "Search fit's options on Optuna: each trial a lightbert fit run of its own (runs/tune-NAME/trial_K), the TPE"
        " sampler, a median pruner fed after every validation; the study in an SQLite file, so running the same"
        " command again continues it. At the end: a table of trials, best.yaml, the best checkpoint and figures.",
    )
    p.add_argument("--config", type=str, required=True, help="a lightbert fit config (YAML): what every trial runs")
    p.add_argument(
        "--search",
        type=str,
        required=True,
        help="YAML of options to search: 'model.learning_rate: {low: 1e-5, high: 1e-4, log: true}',"
        " 'data.batch_size: [16, 32]', 'trainer.max_epochs: {low: 1, high: 3}'",
    )
    p.add_argument("--n_trials", type=int, default=20, help="trials to complete or prune, counting earlier runs")
    p.add_argument("--timeout", type=float | None, default=None, help="start no trial after this many seconds")
    p.add_argument("--study_name", type=str | None, default=None, help="the study's name (default: --search's stem)")
    p.add_argument(
        "--storage",
        type=str | None,
        default=None,
        help="Optuna storage URL (default: sqlite:///runs/tune-NAME/study.db)",
    )
    p.add_argument(
        "--metric", type=str, default="val_loss", help=f"the metric to optimise: {', '.join(TUNABLE_METRICS)}"
    )
    p.add_argument(
        "--direction",
        type=Literal["min", "max"] | None,
        default=None,
        help="min or max (default: min for losses and errors, max for the rest)",
    )
    p.add_argument("--seed", type=int, default=42, help="the TPE sampler's seed")
    p.add_argument("--root", type=str, default="runs", help="where runs/tune-NAME goes")
    p.add_argument(
        "--pruner_startup_trials",
        type=int,
        default=2,
        help="trials that run to the end before the median pruner may stop one",
    )
    config = parse(p, args)
    tune(
        config.config, config.search, config.n_trials, timeout=config.timeout, study_name=config.study_name,
        storage=config.storage, metric=config.metric, direction=config.direction, seed=config.seed, root=config.root,
        pruner_startup_trials=config.pruner_startup_trials,
    )  # fmt: skip


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "fit": run_training,
    "validate": run_training,
    "test": run_training,
    "tune": run_tune,
    "predict": run_predict,
    "evaluate": run_evaluate,
    "serve": run_serve,
    "export": run_export,
    "inspect": run_inspect,
}


def quiet_transformers() -> None:
    # Weight-loading progress bars and "newly initialized" notices are noise on a command line; errors still show.
    # Through the variables transformers reads when imported, so that --help and a bad option do not import it
    # (a user's own setting of them wins).
    if "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# What to do after Ctrl+C, by command.
AFTER_INTERRUPT = {
    "fit": "run again with --ckpt_path to resume from the last checkpoint",
    "tune": "run the same command again to continue the study",
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0, 2 for a user error, 143 after SIGTERM, 130 after Ctrl+C, 1 for a
    bug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        command = COMMANDS.get(argv[0])
        if command is None:
            raise LightbertError(f"unknown command {argv[0]!r}", "use one of: " + ", ".join(COMMANDS))
        quiet_transformers()
        command(argv if command is run_training else argv[1:])
        return 0
    except LightbertError as err:
        note(f"error: {err}")  # in a distributed run every process stops; the first one says why
        return 2
    except Terminated as stop:
        where = f"saved {stop.path}; resume with --ckpt_path {stop.path}" if stop.path else "no checkpoint was saved"
        note(f"error: stopped by SIGTERM ({where})")  # every process exits 143; the first one says why
        return 143
    except KeyboardInterrupt:
        print(f"error: interrupted ({AFTER_INTERRUPT.get(argv[0], 'run the same command again')})", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("LIGHTBERT_DEBUG"):  # a bug, not a bad input: say so, short unless asked for more
            raise
        message = one_line(str(err))[:300]
        print(
            f"error: internal error {type(err).__name__}: {message}"
            " (please report it; set LIGHTBERT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
