"""The `lightbert` command: LightningCLI conventions, run directory layout, summaries, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from conftest import sentiment_rows, write_csv

from lightbert.cli import main


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lightbert.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def fit_args(base, train, val, root, *extra):
    return ["fit", f"--model.base={base}", f"--data.train={train}", f"--data.validation={val}",
            f"--trainer.default_root_dir={root}", "--trainer.max_epochs=1", "--data.batch_size=8",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]


def test_fit_writes_run_directory_and_reports_where_things_are(tiny_bert, sentiment_files, tmp_path, capsys):
    assert main(fit_args(tiny_bert, *sentiment_files, tmp_path / "runs")) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "metrics.csv").is_file() and "val_accuracy" in (run / "metrics.csv").read_text()
    assert (run / "config.yaml").is_file()
    assert "validation: accuracy" in out and "f1_macro" in out
    assert f"last checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in out
    assert "best checkpoint: " + str(run / "checkpoints" / "best-") in out


def test_config_file_sets_the_same_options_as_flags(tiny_bert, sentiment_files, tmp_path):
    train, val = sentiment_files
    config = {"model": {"base": str(tiny_bert), "learning_rate": 0.001},
              "data": {"train": str(train), "validation": str(val), "batch_size": 8},
              "trainer": {"max_steps": 3, "default_root_dir": str(tmp_path / "runs"), "enable_progress_bar": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(tmp_path / "c.yaml")]) == 0
    saved = yaml.safe_load((tmp_path / "runs" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["learning_rate"] == 0.001 and saved["trainer"]["max_steps"] == 3


def test_resuming_a_finished_run_says_so(tiny_bert, sentiment_files, tmp_path, capsys):
    assert main(fit_args(tiny_bert, *sentiment_files, tmp_path / "runs")) == 0
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert main(fit_args(tiny_bert, *sentiment_files, tmp_path / "runs", f"--ckpt_path={last}")) == 0
    assert "already complete" in capsys.readouterr().out


def test_validate_and_test_subcommands_report_metrics(tiny_bert, sentiment_files, tmp_path, capsys):
    assert main(fit_args(tiny_bert, *sentiment_files, tmp_path / "runs")) == 0
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    train, val = sentiment_files
    capsys.readouterr()
    args = fit_args(tiny_bert, *sentiment_files, tmp_path / "runs", f"--ckpt_path={last}", f"--data.test={val}")[1:]
    args = [a for a in args if not a.startswith("--trainer.max_epochs")]
    assert main(["test", *args]) == 0
    assert "test: accuracy" in capsys.readouterr().out


def test_help_explains_each_option():
    result = cli("fit", "--help")
    assert result.returncode == 0
    for flag in ("--model.base", "--data.train", "--data.validation", "--data.test", "--data.text_column",
                 "--data.text_pair_column", "--data.label_column", "--data.task", "--data.max_length",
                 "--data.batch_size", "--trainer.max_epochs", "--trainer.max_steps", "--trainer.default_root_dir",
                 "--ckpt_path", "--seed_everything", "--config", "--print_config", "--checkpoint.last_every_n_steps"):
        assert flag in result.stdout, flag
    assert "column with the label, by name or position" in result.stdout


def test_print_config_prints_yaml_with_our_defaults():
    result = cli("fit", "--print_config")
    config = yaml.safe_load(result.stdout)
    assert config["checkpoint"]["monitor"] == "val_loss" and config["checkpoint"]["save_last"] is True
    assert config["data"]["batch_size"] == 32 and config["trainer"]["max_epochs"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--data.train=/no/such/file.csv"], "error: data file not found: /no/such/file.csv (check the path)"),
        (["fit", "--data.batch_size=abc"], "error: Parser key \"data.batch_size\""),
        (["fit", "--no_such_flag=1"], "error: unrecognized arguments: --no_such_flag=1"),
        (["fit", "--model.base=/no/such/dir"], "error: base model directory not found: /no/such/dir"),
        (["frobnicate"], "error: unknown command 'frobnicate'"),
        (["predict", "/no/such.ckpt", "a text", "--precision=int4"], "error: Parser key \"precision\""),  # before loading
        (["predict", "/no/such.ckpt", "a text", "--device=gpu"], "error: unknown device 'gpu' (use auto, cpu, cuda, cuda:N or mps)"),
        (["predict", "/no/such.ckpt", "a text", "--device=cuda:99"], "error: device 'cuda:99' asked for, but this machine has"),
    ],
)
def test_bad_input_ends_with_one_error_line_and_exit_code_2(args, message):
    result = cli(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(message)
    assert "Traceback" not in result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1


def test_missing_label_column_is_a_clear_error(tiny_bert, tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], sentiment_rows(8))
    result = cli(*fit_args(tiny_bert, path, path, tmp_path / "runs", "--data.label_column=stars"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "no label column 'stars'" in result.stderr
    assert "Traceback" not in result.stderr
