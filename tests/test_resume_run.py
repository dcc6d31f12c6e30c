"""A resumed ``lightbert fit`` continues its run: the same best checkpoint, one metrics.csv, the same weights as the
uninterrupted run, however it was stopped, and whether the best came before or after the stop. Signals are sent at
known points by a test callback, never after a sleep."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import assert_one_error_line, run_cli, sentiment_rows, write_csv

import lightbert.lightning_cli as lightning_cli
from lightbert.callbacks import Checkpointing
from lightbert.datamodule import ClassificationDataModule
from lightbert.model import SequenceClassifier

EPOCHS, BATCHES = 4, 10  # 40 training rows in batches of 4


class SignalAt(pl.Callback):
    """Sends this process SIGTERM at one point of the run: after the last training batch of ``epoch``
    (``boundary``: its validation runs, then the run stops), or when the second validation batch of ``epoch``
    starts (``validation``)."""

    def __init__(self, kind: str, epoch: int) -> None:
        self.kind, self.epoch = kind, epoch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.kind == "boundary" and trainer.current_epoch == self.epoch and batch_idx == BATCHES - 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        stopped_here = self.kind == "validation" and trainer.current_epoch == self.epoch and batch_idx == 1
        if stopped_here and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


# kill -9 in a process of its own, at the fifth batch of an epoch, right after a step-wise last.ckpt; the CSV log is
# flushed first (as Lightning does every 100 steps), so rows logged after the checkpoint are on disk.
KILL_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import lightning.pytorch as pl
    import torch
    import lightbert.lightning_cli as lightning_cli
    from lightbert.cli import main

    kill_at = int(sys.argv[1])
    torch.set_num_threads(int(sys.argv[2]))  # the test process's, so that both compute alike
    sys.argv[1:3] = []

    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == kill_at:
                for logger in trainer.loggers:
                    logger.save()
                os.kill(os.getpid(), signal.SIGKILL)

    instantiate = lightning_cli.LightbertCLI.instantiate_trainer

    def with_kill(self, **kwargs):
        trainer = instantiate(self, **kwargs)
        trainer.callbacks.append(Kill())
        return trainer

    lightning_cli.LightbertCLI.instantiate_trainer = with_kill
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    train = write_csv(directory / "train.csv", ["text", "label"], sentiment_rows(4 * BATCHES, seed=1))
    val = write_csv(directory / "val.csv", ["text", "label"], sentiment_rows(16, seed=2))
    return train, val


def fit_args(base, data, root, mode, *extra):
    train, val = data
    return [
        "fit", "--model.base", base, "--data.train", train, "--data.validation", val,
        "--trainer.default_root_dir", root, "--data.batch_size", "4", "--data.eval_batch_size", "4",
        "--model.learning_rate", "5e-3", "--trainer.max_epochs", EPOCHS, "--trainer.log_every_n_steps", "3",
        "--trainer.enable_progress_bar", "false", "--checkpoint.mode", mode, *extra,
    ]  # fmt: skip


def fit(base, data, root, mode, *extra, stop=None, monkeypatch=None):
    if stop is not None:
        instantiate = lightning_cli.LightbertCLI.instantiate_trainer

        def with_signal(self, **kwargs):
            trainer = instantiate(self, **kwargs)
            trainer.callbacks.append(stop)
            return trainer

        monkeypatch.setattr(lightning_cli.LightbertCLI, "instantiate_trainer", with_signal)
    try:
        return run_cli(*fit_args(base, data, root, mode, *extra))
    finally:
        if stop is not None:
            monkeypatch.undo()


def outcome(run_dir: Path) -> dict:
    """What a finished run says about itself: its best checkpoint, its metrics.csv rows and its final weights."""
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(v for k, v in last["callbacks"].items() if k.startswith("Checkpointing"))
    best = state["best_model_path"]
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return {
        "best": (Path(best).name, state["best_details"][best]["epoch"], state["best_details"][best]["step"],
                 float(state["best_model_score"])),
        "best_file_exists": Path(best).is_file(),
        "rows": rows,
        "weights": last["state_dict"],
        "global_step": last["global_step"],
    }  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert, data, tmp_path_factory):
    """The reference runs, best by the lowest and by the highest validation loss (two different best epochs)."""
    runs = {}
    for mode in ("min", "max"):
        root = tmp_path_factory.mktemp(f"straight-{mode}")
        result = run_cli(*fit_args(tiny_bert, data, root, mode))
        assert result.code == 0, result.err
        runs[mode] = outcome(root / "version_0")
    assert runs["min"]["best"][1] != runs["max"]["best"][1], "the two modes should pick different epochs"
    return runs


def stop_epoch(kind: str, best_epoch: int, best_comes: str) -> int:
    """The epoch to stop in so that the best checkpoint is made before (or after) the stop."""
    if kind == "validation":  # the stopped validation is epoch s's: after the stop when s == best
        return best_epoch + 1 if best_comes == "before" else best_epoch
    if kind == "boundary":  # epoch s is validated before the stop
        return best_epoch if best_comes == "before" else best_epoch - 1
    return best_epoch + 1 if best_comes == "before" else best_epoch  # kill -9 inside epoch s, before its validation


@pytest.mark.parametrize("best_comes", ["before", "after"])
@pytest.mark.parametrize("kind", ["boundary", "validation", "kill"])
def test_a_resumed_run_ends_as_the_uninterrupted_one(
    tiny_bert, data, tmp_path, uninterrupted, monkeypatch, kind, best_comes
):
    # Before: the lower best epoch (of the two modes'); after: the higher one.
    mode = min(("min", "max"), key=lambda m: uninterrupted[m]["best"][1] * (1 if best_comes == "before" else -1))
    straight = uninterrupted[mode]
    epoch = stop_epoch(kind, straight["best"][1], best_comes)
    assert 0 <= epoch < EPOCHS, f"no epoch to stop in for a best {best_comes} the stop in this data"
    root = tmp_path / "runs"
    if kind == "kill":
        kill_at = epoch * BATCHES + 5
        args = fit_args(tiny_bert, data, root, mode, "--checkpoint.last_every_n_steps", "5")
        command = [sys.executable, "-c", KILL_DRIVER, str(kill_at), str(torch.get_num_threads()), *map(str, args)]
        killed = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert torch.load(root / "version_0/checkpoints/last.ckpt", weights_only=True)["global_step"] == kill_at
    else:
        stopped = fit(tiny_bert, data, root, mode, stop=SignalAt(kind, epoch), monkeypatch=monkeypatch)
        assert stopped.code == 143, stopped.err
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    resumed = run_cli(*fit_args(tiny_bert, data, root, mode, "--ckpt_path", last))
    assert resumed.code == 0, resumed.err
    assert sorted(p.name for p in root.iterdir()) == ["version_0"]  # one run directory
    result = outcome(root / "version_0")
    assert result["best"] == straight["best"]  # file name, epoch, step and score
    assert result["best_file_exists"]
    assert result["rows"] == straight["rows"]  # every validation once, no row lost or repeated
    assert result["global_step"] == straight["global_step"] == EPOCHS * BATCHES
    assert all(torch.equal(result["weights"][k], v) for k, v in straight["weights"].items())
    best_line = next(line for line in resumed.out.splitlines() if line.startswith("best: "))
    name, best_epoch, step, score = straight["best"]
    assert best_line.startswith(f"best: epoch {best_epoch}, step {step}, val_loss {score:.4f}")
    assert best_line.endswith(f"version_0/checkpoints/best.ckpt ({name})")
    assert os.path.samefile(root / "version_0/checkpoints/best.ckpt", root / "version_0/checkpoints" / name)


def test_a_stop_in_the_last_validation_validates_the_last_epoch_on_resume(tiny_bert, data, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    stopped = fit(tiny_bert, data, root, "min", stop=SignalAt("validation", EPOCHS - 1), monkeypatch=monkeypatch)
    assert stopped.code == 143
    resumed = run_cli(*fit_args(tiny_bert, data, root, "min", "--ckpt_path", root / "version_0/checkpoints/last.ckpt"))
    assert resumed.code == 0, resumed.err
    assert "validated again" in resumed.out
    assert "last: epoch 3, step 40, val_loss" in resumed.out
    with open(root / "version_0" / "metrics.csv", newline="") as file:
        validated = [row["epoch"] for row in csv.DictReader(file) if row["val_loss"]]
    assert validated == ["0", "1", "2", "3"]


def test_a_run_ending_on_max_steps_inside_an_epoch_validates_at_its_end(tiny_bert, data, tmp_path):
    root = tmp_path / "runs"
    result = run_cli(*fit_args(tiny_bert, data, root, "min", "--trainer.max_steps", "7"))
    assert result.code == 0, result.err
    assert "best: epoch 0, step 7, val_loss" in result.out
    assert (root / "version_0" / "checkpoints" / "best.ckpt").is_file()


def test_resuming_with_an_option_that_changes_training_is_refused(tiny_bert, data, tmp_path, uninterrupted):
    root = tmp_path / "runs"
    assert run_cli(*fit_args(tiny_bert, data, root, "min", "--trainer.max_epochs", "1")).code == 0
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    result = run_cli(*fit_args(tiny_bert, data, root, "min", "--model.learning_rate", "1e-3", "--ckpt_path", last))
    assert_one_error_line(result, "cannot resume", "--model.learning_rate 0.001 (the run's: 0.005)")


def test_resuming_on_changed_training_data_is_refused(tiny_bert, data, tmp_path):
    _, val = data
    copy = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(4 * BATCHES, seed=1))
    root = tmp_path / "runs"
    assert run_cli(*fit_args(tiny_bert, (copy, val), root, "min", "--trainer.max_epochs", "1")).code == 0
    write_csv(copy, ["text", "label"], sentiment_rows(4 * BATCHES, seed=3))
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    result = run_cli(*fit_args(tiny_bert, (copy, val), root, "min", "--trainer.max_epochs", "2", "--ckpt_path", last))
    assert_one_error_line(result, "cannot resume", "--data.train", "other contents")


def test_resuming_from_python_keeps_the_best_checkpoint_across_directories(tiny_bert, data, tmp_path):
    """Lightning forgets the best when the resumed run's checkpoint directory differs; Checkpointing does not."""
    train, val = data

    class Interrupted(Exception):
        pass

    class InterruptAt(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 2 * BATCHES:  # epoch 1 and its checkpoints done
                raise Interrupted

    def run(directory, callbacks=(), ckpt_path=None):
        pl.seed_everything(7, verbose=False)
        module = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert), batch_size=4)
        checkpoint = Checkpointing(dirpath=str(directory), monitor="val_loss", save_last=True)
        trainer = pl.Trainer(max_epochs=3, callbacks=[*callbacks, checkpoint], logger=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", deterministic=True)  # fmt: skip
        with contextlib.suppress(Interrupted):
            trainer.fit(SequenceClassifier(base=str(tiny_bert), learning_rate=5e-3), module, ckpt_path=ckpt_path)
        return checkpoint

    straight = run(tmp_path / "straight")
    run(tmp_path / "a", [InterruptAt()])
    resumed = run(tmp_path / "b", ckpt_path=str(tmp_path / "a" / "last.ckpt"))
    assert float(resumed.best_model_score) == float(straight.best_model_score)
    assert Path(resumed.best_model_path).name == Path(straight.best_model_path).name
    assert resumed.best_details[resumed.best_model_path] == straight.best_details[straight.best_model_path]


def test_validate_without_data_options_uses_the_runs_recorded_validation_file(tiny_bert, data, tmp_path):
    root = tmp_path / "runs"
    assert run_cli(*fit_args(tiny_bert, data, root, "min", "--trainer.max_epochs", "1")).code == 0
    best = root / "version_0" / "checkpoints" / "best.ckpt"
    result = run_cli("validate", "--ckpt_path", best)
    assert result.code == 0, result.err
    assert f"validation data: {Path(data[1]).resolve()}, as recorded in the checkpoint" in result.out
    with open(root / "version_0" / "metrics.csv", newline="") as file:
        loss = float(next(row["val_loss"] for row in csv.DictReader(file) if row["val_loss"]))
    assert f"loss {loss:.4f}" in result.out


def test_validate_refuses_a_recorded_file_that_changed(tiny_bert, data, tmp_path):
    train, _ = data
    val = write_csv(tmp_path / "val.csv", ["text", "label"], sentiment_rows(16, seed=2))
    root = tmp_path / "runs"
    assert run_cli(*fit_args(tiny_bert, (train, val), root, "min", "--trainer.max_epochs", "1")).code == 0
    write_csv(val, ["text", "label"], sentiment_rows(12, seed=5))
    result = run_cli("validate", "--ckpt_path", root / "version_0" / "checkpoints" / "last.ckpt")
    assert_one_error_line(result, "has changed since the run", "--data.validation")


def test_fit_says_what_it_inferred_from_the_data(tiny_bert, tmp_path):
    rows = [(f"review {i} good", str(1 + i % 5)) for i in range(40)]
    train = write_csv(tmp_path / "stars.csv", ["review", "stars"], rows)
    result = run_cli(
        "fit", "--model.base", tiny_bert, "--data.train", train, "--trainer.default_root_dir", tmp_path / "runs",
        "--trainer.max_steps", "1", "--data.batch_size", "8", "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "task: single_label (inferred from the labels; --data.task to choose)" in result.out
    assert "labels: 5, with their training rows: 1 (" in result.out
    assert "columns of stars.csv: text 'review', label 'stars'" in result.out


def test_a_run_resumed_by_relative_paths_keeps_the_names_of_its_checkpoints(tiny_bert, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's way: runs/ under the working directory, paths typed relative
    assert run_cli(*fit_args(tiny_bert, data, "runs", "min", "--trainer.max_epochs", "1")).code == 0
    last = "runs/version_0/checkpoints/last.ckpt"
    resumed = run_cli(*fit_args(tiny_bert, data, "runs", "min", "--trainer.max_epochs", "2", "--ckpt_path", last))
    assert resumed.code == 0, resumed.err
    assert "resuming at epoch 0, step 10, continuing its run directory: runs/version_0" in resumed.out
    assert "→ runs/version_0/checkpoints/last.ckpt\n" in resumed.out
    names = sorted(p.name for p in (tmp_path / "runs" / "version_0" / "checkpoints").iterdir())
    assert not [name for name in names if "-v1" in name], names


def test_resuming_with_a_cut_metrics_file_is_refused_before_anything_is_written(tiny_bert, data, tmp_path):
    root = tmp_path / "runs"
    assert run_cli(*fit_args(tiny_bert, data, root, "min", "--trainer.max_epochs", "1")).code == 0
    run = root / "version_0"
    (run / "metrics.csv").write_text("epoch,step\n")
    config = (run / "config.yaml").read_text()
    last = run / "checkpoints" / "last.ckpt"
    result = run_cli(*fit_args(tiny_bert, data, root, "min", "--trainer.max_epochs", "2", "--ckpt_path", last))
    assert_one_error_line(result, "metrics.csv has fewer rows than the", "restore the run's metrics.csv")
    assert (run / "config.yaml").read_text() == config and (run / "metrics.csv").read_text() == "epoch,step\n"


def test_a_refused_resume_says_how_to_resume_with_the_runs_own_options(tiny_bert, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*fit_args(tiny_bert, data, "runs", "min", "--trainer.max_epochs", "1")).code == 0
    last = "runs/version_0/checkpoints/last.ckpt"
    refused = run_cli("fit", "--ckpt_path", last)  # every option forgotten
    assert_one_error_line(
        refused,
        "--model.base None (the run's: ",
        f"lightbert fit --config runs/version_0/config.yaml --ckpt_path {last}",
    )
    resumed = run_cli("fit", "--config", "runs/version_0/config.yaml", "--ckpt_path", last, "--trainer.max_epochs", "2")
    assert resumed.code == 0, resumed.err
    assert "last: epoch 1, step 20," in resumed.out


def test_validate_without_data_options_holds_out_the_runs_own_split_again(tiny_bert, data, tmp_path):
    train, _ = data
    root = tmp_path / "runs"
    fitted = run_cli(
        "fit", "--model.base", tiny_bert, "--data.train", train, "--data.val_fraction", "0.25",
        "--trainer.default_root_dir", root, "--trainer.max_epochs", "1", "--data.batch_size", "4",
        "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert fitted.code == 0, fitted.err
    result = run_cli("validate", "--ckpt_path", root / "version_0" / "checkpoints" / "last.ckpt")
    assert result.code == 0, result.err
    assert f"validation data: {Path(train).resolve()} (its held-out 0.25 split)" in result.out
    with open(root / "version_0" / "metrics.csv", newline="") as file:
        loss = float(next(row["val_loss"] for row in csv.DictReader(file) if row["val_loss"]))
    assert f"loss {loss:.4f}" in result.out  # the same rows as the run's own validation


def test_test_without_data_options_uses_the_runs_recorded_test_file(tiny_bert, data, tmp_path):
    root = tmp_path / "runs"
    _, val = data
    assert run_cli(*fit_args(tiny_bert, data, root, "min", "--trainer.max_epochs", "1", "--data.test", val)).code == 0
    result = run_cli("test", "--ckpt_path", root / "version_0" / "checkpoints" / "best.ckpt")
    assert result.code == 0, result.err
    assert f"test data: {Path(val).resolve()}, as recorded in the checkpoint and unchanged" in result.out
    assert "test: accuracy" in result.out
