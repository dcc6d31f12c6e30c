"""Training settings fitted to the data: what a user who passes only their files gets."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import run_cli, sentiment_rows, write_csv

from lightbert.defaults import MIN_STEPS, fitted_batch_size, fitted_epochs, fitted_learning_rate


@pytest.mark.parametrize(
    ("examples", "batch_size", "learning_rate", "epochs"),
    [
        (4_249, 16, 8e-5, 5),  # STS-B's training pairs: 266 steps an epoch
        (9_000, 16, 8e-5, 3),  # AG News' 10,000 rows less the validation split
        (54_553, 32, 5e-5, 2),  # SST-2's training file less the validation split
        (40, 16, 8e-5, 10),  # a toy file: capped
    ],
)
def test_fitted_settings_make_small_data_take_smaller_batches_and_enough_steps(
    examples, batch_size, learning_rate, epochs
):
    assert fitted_batch_size(examples) == batch_size
    assert fitted_learning_rate(examples) == learning_rate
    assert fitted_epochs(examples, batch_size) == epochs


def test_fitted_epochs_count_the_optimizer_steps_of_all_processes_and_accumulation():
    one = fitted_epochs(9_000, 16)
    assert fitted_epochs(9_000, 16, processes=2) > one  # each step takes two batches: fewer steps an epoch
    assert fitted_epochs(9_000, 16, accumulate=2) == fitted_epochs(9_000, 32)
    steps_per_epoch = -(-9_000 // 16)
    assert (one - 1) * steps_per_epoch < MIN_STEPS <= one * steps_per_epoch


@pytest.fixture
def small_files(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(96, seed=1))
    val = write_csv(tmp_path / "val.csv", ["text", "label"], sentiment_rows(8, seed=2))
    return train, val


def fit_with_defaults(tiny_bert, files, root, *extra):
    train, val = files
    return run_cli(
        "fit", f"--model.base={tiny_bert}", f"--data.train={train}", f"--data.validation={val}",
        f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", *extra,
    )  # fmt: skip


def test_fit_with_only_files_prints_records_and_trains_with_the_fitted_settings(tiny_bert, small_files, tmp_path):
    result = fit_with_defaults(tiny_bert, small_files, tmp_path / "runs")
    assert result.code == 0, result.err
    line = next(line for line in result.out.splitlines() if line.startswith("settings fitted to"))
    assert line.startswith("settings fitted to 96 training examples:")
    assert "--data.batch_size 16" in line and "--model.learning_rate 8e-05" in line
    assert "--trainer.max_epochs 10" in line
    run = tmp_path / "runs" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["batch_size"] == 16 and saved["model"]["learning_rate"] == 8e-5
    assert saved["trainer"]["max_epochs"] == 10
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 9 and checkpoint["global_step"] == 10 * 6  # 96 rows in batches of 16
    assert checkpoint["hyper_parameters"]["learning_rate"] == 8e-5
    assert checkpoint["datamodule_hyper_parameters"]["batch_size"] == 16


def test_settings_the_user_gives_are_kept_and_only_the_rest_are_fitted(tiny_bert, small_files, tmp_path):
    result = fit_with_defaults(
        tiny_bert, small_files, tmp_path / "runs", "--data.batch_size=32", "--model.learning_rate=0.001"
    )
    assert result.code == 0, result.err
    line = next(line for line in result.out.splitlines() if line.startswith("settings fitted to"))
    assert "batch_size" not in line and "learning_rate" not in line
    assert "--trainer.max_epochs 10" in line  # 3 steps an epoch: the cap
    saved = yaml.safe_load((tmp_path / "runs" / "version_0" / "config.yaml").read_text())
    assert saved["data"]["batch_size"] == 32 and saved["model"]["learning_rate"] == 0.001


def test_max_steps_given_means_no_fitted_epochs(tiny_bert, small_files, tmp_path):
    result = fit_with_defaults(
        tiny_bert, small_files, tmp_path / "runs", "--trainer.max_steps=2", "--data.batch_size=8",
        "--model.learning_rate=0.001",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "settings fitted to" not in result.out
    checkpoint = torch.load(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2


@pytest.mark.parametrize(("given", "expected"), [(None, 32), (5, 5)])
def test_validation_batches_are_twice_the_fitted_training_batch_unless_given(tiny_bert, small_files, given, expected):
    from lightbert.datamodule import ClassificationDataModule

    train, val = small_files
    data = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert),
                                    eval_batch_size=given)  # fmt: skip
    data.setup("fit")
    assert data.batch_size == 16 and data.eval_batch_size == expected
    assert len(next(iter(data.val_dataloader()))["labels"]) == min(expected, 8)  # 8 validation rows
