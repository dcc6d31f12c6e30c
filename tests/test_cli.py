"""The `lightbert` command: LightningCLI conventions, run directory layout, summaries, one-line errors."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import (
    assert_one_error_line,
    file_size_limit,
    fit_args,
    read_jsonl,
    run_cli,
    run_process,
    sentiment_rows,
    write_csv,
)

from lightbert.cli import main


@pytest.fixture
def finished_run(tiny_bert, sentiment_files, tmp_path):
    result = run_cli(*fit_args(tiny_bert, *sentiment_files, tmp_path / "runs"))
    assert result.code == 0, result.err
    return tmp_path / "runs" / "version_0", result


def test_fit_writes_run_directory_and_reports_where_things_are(finished_run):
    run, result = finished_run
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "metrics.csv").is_file() and "val_accuracy" in (run / "metrics.csv").read_text()
    assert (run / "config.yaml").is_file()
    assert "\nbest: epoch 0, step 5, val_loss " in result.out and ", accuracy " in result.out
    assert f" → {run / 'checkpoints' / 'best.ckpt'} (best-epoch=0-step=5-val_loss=" in result.out
    assert "\nlast: epoch 0, step 5, val_loss " in result.out
    assert f" → {run / 'checkpoints' / 'last.ckpt'}\n" in result.out


def test_hparams_yaml_records_the_fitted_learning_rate_not_null(finished_run):
    run, result = finished_run
    assert "--model.learning_rate 8e-05" in result.out  # fitted: the run gave none
    assert yaml.safe_load((run / "hparams.yaml").read_text())["learning_rate"] == 8e-05


def test_a_finished_one_epoch_run_counts_one_completed_epoch_everywhere(
    finished_run, tiny_bert, sentiment_files, tmp_path
):
    run, _ = finished_run
    last = run / "checkpoints" / "last.ckpt"
    assert "epochs completed 1, global step 5" in run_cli("inspect", last).out
    assert run_cli("export", last, tmp_path / "exported").code == 0
    assert "- epochs completed: 1, optimizer steps: 5" in (tmp_path / "exported" / "README.md").read_text()
    resumed = run_cli(*fit_args(tiny_bert, *sentiment_files, tmp_path / "runs", f"--ckpt_path={last}"))
    assert "already complete after 1 epoch(s)" in resumed.out


def test_the_progress_bar_shows_no_version_number_and_no_negative_epoch_count_under_max_steps(tiny_bert):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from lightbert.callbacks import progress_bar

    bar = progress_bar()
    trainer = pl.Trainer(max_steps=5, logger=CSVLogger(os.devnull), callbacks=[bar], accelerator="cpu")
    trainer.fit_loop.max_epochs = -1  # what fit makes of max_steps without max_epochs
    assert "v_num" not in bar.get_metrics(trainer, None)
    bar._trainer = trainer  # as its setup does
    if hasattr(bar, "_get_train_description"):  # Rich's bar (tqdm's says "Epoch N" alone)
        assert bar._get_train_description(0).strip() == "Epoch 0"


def test_config_file_sets_the_same_options_as_flags(tiny_bert, sentiment_files, tmp_path):
    train, val = sentiment_files
    config = {
        "model": {"base": str(tiny_bert), "learning_rate": 0.001},
        "data": {"train": str(train), "validation": str(val), "batch_size": 8},
        "trainer": {"max_steps": 3, "default_root_dir": str(tmp_path / "runs"), "enable_progress_bar": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert run_cli("fit", "--config", tmp_path / "c.yaml").code == 0
    saved = yaml.safe_load((tmp_path / "runs" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["learning_rate"] == 0.001 and saved["trainer"]["max_steps"] == 3


def test_resuming_a_finished_run_says_so_and_trains_nothing(finished_run, tiny_bert, sentiment_files, tmp_path):
    run, _ = finished_run
    last = run / "checkpoints" / "last.ckpt"
    result = run_cli(*fit_args(tiny_bert, *sentiment_files, tmp_path / "runs", f"--ckpt_path={last}"))
    assert result.code == 0
    assert "the run is already complete after 1 epoch(s), step 5: nothing trained" in result.out


def test_validate_and_test_subcommands_report_metrics(finished_run, tiny_bert, sentiment_files, tmp_path):
    run, _ = finished_run
    _, val = sentiment_files
    args = fit_args(tiny_bert, *sentiment_files, tmp_path / "runs", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    args = [a for a in args[1:] if not a.startswith("--trainer.max_epochs")]
    assert "validation: accuracy" in run_cli("validate", *args).out
    assert "test: accuracy" in run_cli("test", *args, f"--data.test={val}").out


def test_help_explains_each_option(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--model.base",
        "--data.train",
        "--data.validation",
        "--data.test",
        "--data.text_column",
        "--data.text_pair_column",
        "--data.label_column",
        "--data.task",
        "--data.max_length",
        "--data.batch_size",
        "--trainer.max_epochs",
        "--trainer.max_steps",
        "--trainer.default_root_dir",
        "--ckpt_path",
        "--seed_everything",
        "--config",
        "--print_config",
        "--checkpoint.last_every_n_steps",
    ):
        assert flag in out, flag
    assert "column with the label, by name or position" in out


def test_print_config_prints_yaml_with_our_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["checkpoint"]["monitor"] == "val_loss" and config["checkpoint"]["save_last"] is True
    # Unset means fitted to the training data at the start of fit (tests/test_defaults.py).
    assert config["data"]["batch_size"] is None and config["trainer"]["max_epochs"] is None
    assert config["model"]["learning_rate"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--data.train=/no/such/file.csv"], "error: data file not found: /no/such/file.csv (check the path)"),
        (["fit", "--data.batch_size=abc"], 'error: Parser key "data.batch_size"'),
        (["fit", "--no_such_flag=1"], "error: unrecognized arguments: --no_such_flag=1"),
        (["fit", "--model.base=/no/such/dir"], "error: base model not found: /no/such/dir"),
        (["frobnicate"], "error: unknown command 'frobnicate'"),
        (["predict", "/no/such.ckpt", "a text", "--precision=int4"], 'error: Parser key "precision"'),
        (["predict", "/no/such.ckpt", "a text", "--device=gpu"], "error: unknown device 'gpu' (use auto, cpu, cuda"),
        (["predict", "/no/such.ckpt", "a text", "--device=cuda:99"], "error: device 'cuda:99' asked for, but"),
    ],
)
def test_bad_input_ends_with_one_error_line_and_exit_code_2(args, message):
    result = run_cli(*args)
    assert_one_error_line(result)
    assert result.err_lines[0].startswith(message)


def test_the_command_as_a_process_prints_one_line_and_no_traceback_for_a_bad_input(tmp_path):
    result = run_process("predict", tmp_path / "missing.ckpt", "a good film")
    assert_one_error_line(result, "missing.ckpt")


def test_help_and_a_bad_option_answer_without_importing_torch():
    code = (
        "import contextlib, io, sys\n"
        "from lightbert.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['predict', '--help'])\n"
        "assert main(['evaluate', 'model.ckpt', '--input', 'x.csv', '--bogus', '1']) == 2\n"
        "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("error: unrecognized arguments") and "--bogus" in result.stderr


def test_transformers_imported_after_the_options_are_parsed_is_quiet():
    # No weight-loading progress bars and no "newly initialized" reports on a command line; errors still show.
    code = (
        "from lightbert.cli import quiet_transformers\n"
        "quiet_transformers()\n"
        "from transformers.utils import logging\n"
        "assert logging.get_verbosity() == logging.ERROR and not logging.is_progress_bar_enabled()\n"
    )
    environment = {
        k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")
    }
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr


def test_missing_label_column_is_a_clear_error(tiny_bert, tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], sentiment_rows(8))
    result = run_cli(*fit_args(tiny_bert, path, path, tmp_path / "runs", "--data.label_column=stars"))
    assert_one_error_line(result, "no label column 'stars'")


def test_an_explicit_task_trains_and_the_checkpoint_says_the_task_once(tiny_bert, tmp_path):
    rows = [(text, "the film", f"{int(label) * 4 + 0.5:.3f}") for text, label in sentiment_rows(16)]
    path = write_csv(tmp_path / "stsb.tsv", None, rows)
    args = fit_args(tiny_bert, path, path, tmp_path / "runs", "--data.text_column=0", "--data.text_pair_column=1")
    result = run_cli(*args, "--data.label_column=2", "--data.task=regression")
    assert result.code == 0, result.err
    checkpoint = torch.load(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "task" not in checkpoint["hyper_parameters"] and "task" not in checkpoint["lightbert"]["data"]
    assert checkpoint["datamodule_hyper_parameters"]["task"] == checkpoint["lightbert"]["task"] == "regression"


@pytest.mark.parametrize("cpu_has_bf16", [False, True], ids=["cpu-without-bf16", "cpu-with-bf16"])
def test_predict_in_bf16_says_in_one_line_when_this_cpu_makes_it_slower_and_carries_on(
    trained_checkpoint, monkeypatch, cpu_has_bf16
):
    monkeypatch.setattr("lightbert.devices.has_bf16_arithmetic", lambda: cpu_has_bf16)
    result = run_cli("predict", trained_checkpoint, "a fine film", "--precision", "bf16", "--device", "cpu")
    assert result.code == 0, result.err
    assert len(read_jsonl(result.out)) == 1
    warnings = [line for line in result.err_lines if line.startswith("warning:")]
    assert len(warnings) == (0 if cpu_has_bf16 else 1)
    assert all("bf16" in line and "slower than fp32" in line for line in warnings)


def test_fit_in_bf16_mixed_says_in_one_line_when_this_cpu_makes_it_slower_and_trains(
    tiny_bert, sentiment_files, tmp_path, monkeypatch
):
    monkeypatch.setattr("lightbert.devices.has_bf16_arithmetic", lambda: False)
    result = run_cli(*fit_args(tiny_bert, *sentiment_files, tmp_path, "--trainer.precision=bf16-mixed"))
    assert result.code == 0, result.err
    assert sum(line.startswith("warning: this CPU has no bf16") for line in result.err_lines) == 1
    assert list(tmp_path.rglob("last.ckpt"))


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--data.batch_size=many", "expected int or null, got 'many'"),
        ("--model.learning_rate=fast", "expected float or null, got 'fast'"),
    ],
)
def test_a_value_of_the_wrong_type_says_which_types_the_option_takes(option, expected):
    assert_one_error_line(run_cli("fit", option), f'"{option[2:].split("=")[0]}": {expected}', "lightbert fit --help")


@pytest.mark.parametrize(
    ("command", "advice"),
    [("fit", "--ckpt_path"), ("tune", "run the same command again to continue the study"), ("predict", "again")],
)
def test_ctrl_c_says_in_one_line_what_to_do_for_that_command(command, advice, monkeypatch, capsys):
    from lightbert import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    assert cli.main([command]) == 130
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: interrupted (") and advice in line


# -- a checkpoint that cannot be written -----------------------------------------------------------------------------


def assert_ends_with_one_error_line(result, *fragments: str) -> str:
    """Exit code 2, and training's output (Lightning's lines) ended by one ``error: <what> (<what to do>)`` line,
    without a traceback."""
    assert result.code == 2, result.err[-2000:]
    assert [line for line in result.err_lines if line.startswith("error:")] == result.err_lines[-1:], result.err
    assert "Traceback" not in result.err and "inline_container" not in result.err, result.err
    line = result.err_lines[-1]
    assert line.rstrip().endswith(")"), line
    for fragment in fragments:
        assert fragment in line, line
    return line


class FullDisk(io.RawIOBase):
    """An open file on a disk with ``room`` bytes left: a write beyond them fails as the kernel's does (ENOSPC)."""

    def __init__(self, file, room: int) -> None:
        super().__init__()
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)


def test_a_checkpoint_save_that_fills_the_disk_ends_in_one_line_and_keeps_the_previous_one(
    tiny_bert, sentiment_files, tmp_path, monkeypatch
):
    saves = []
    save = torch.save

    def second_save_fills_the_disk(checkpoint, file, *args, **kwargs):
        saves.append(checkpoint["global_step"])
        return save(checkpoint, FullDisk(file, room=4096) if len(saves) == 2 else file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", second_save_fills_the_disk)
    args = fit_args(tiny_bert, *sentiment_files, tmp_path / "runs", "--checkpoint.last_every_n_steps=2")
    result = run_cli(*args)
    checkpoints = tmp_path / "runs" / "version_0" / "checkpoints"
    line = assert_ends_with_one_error_line(result, "disk full while writing checkpoint", "last.ckpt")
    assert line.endswith("; the previous one is intact (free some space and run again)")
    assert saves == [2, 4]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 2  # the previous, whole
    assert sorted(path.name for path in checkpoints.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_a_checkpoint_write_that_the_system_refuses_ends_in_one_line_naming_why(tiny_bert, sentiment_files, tmp_path):
    args = fit_args(tiny_bert, *sentiment_files, tmp_path / "runs")
    with file_size_limit(16 * 1024):  # the run's other files are 3 kB at most, its checkpoints ~280 kB
        result = run_cli(*args)
    checkpoints = tmp_path / "runs" / "version_0" / "checkpoints"
    assert_ends_with_one_error_line(result, f"checkpoint {checkpoints / 'best-epoch=0-step=5-'}")
    assert list(checkpoints.iterdir()) == []  # no checkpoint, and no temporary file left


# -- Lightning's lines a user cannot act on ----------------------------------------------------------------------------

UNACTIONABLE_LINES = (
    "💡 Tip",  # Lightning's advertisements: litlogger, litmodels
    "litlogger",
    "litmodels",
    "LeafSpec",  # torch's deprecation of a class Lightning uses
    "is smaller than the logging interval",  # Trainer(log_every_n_steps=50) on a short epoch
    "callbacks used to create the checkpoint",  # validate and test without fit's callbacks
)


def test_a_resumed_fit_then_validate_and_test_print_none_of_lightnings_lines_a_user_cannot_act_on(
    tiny_bert, trained_run, tmp_path
):
    shutil.copytree(trained_run.parent.parent, tmp_path / "trained")  # the shared run, its data files beside it
    data = tmp_path / "trained"
    last = data / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    options = [
        f"--model.base={tiny_bert}",
        f"--data.train={data / 'train.csv'}",
        f"--data.validation={data / 'val.csv'}",
        f"--ckpt_path={last}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",  # a copied run goes on in a new run directory
        "--trainer.enable_progress_bar=false",
    ]
    commands = [
        ["fit", *options, "--trainer.max_epochs=3", "--data.batch_size=8", "--model.learning_rate=0.001"],
        ["validate", *options],
        ["test", *options, f"--data.test={data / 'val.csv'}"],
    ]
    # A real process, as a terminal shows it (here pytest would capture the warnings and log records), running the
    # three commands in turn.
    code = "import json, sys\nfrom lightbert.cli import main\nsys.exit(max([main(c) for c in json.loads(sys.argv[1])]))"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True, env=environment, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "resuming at epoch 1, step 6" in result.stdout and "\nlast: epoch 2, step 9," in result.stdout
    assert "validation: accuracy" in result.stdout and "test: accuracy" in result.stdout
    shown = [line for line in result.stderr.splitlines() if any(text in line for text in UNACTIONABLE_LINES)]
    assert shown == [], result.stderr


def test_a_lightning_warning_a_user_can_act_on_is_still_shown(tiny_bert, sentiment_files, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    args = fit_args(tiny_bert, *sentiment_files, tmp_path / "runs", f"--checkpoint.dirpath={tmp_path / 'mine'}")
    with pytest.warns(UserWarning, match="Checkpoint directory .* exists and is not empty"):
        assert run_cli(*args).code == 0


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_the_ckpt_path_help_asks_for_the_path_of_a_lightbert_checkpoint_not_a_url(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    help_text = " ".join(out.split("  --ckpt_path CKPT_PATH", 1)[1].split("\n  --", 1)[0].split())
    assert help_text.startswith(("Path of a lightbert checkpoint", "Path of the lightbert checkpoint")), help_text
    assert "URL" not in help_text and "registry" not in help_text, help_text
