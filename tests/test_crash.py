"""Crashes, kills and full disks: the latest complete checkpoint always loads, and resuming from it finishes the run
with the same weights as a run that was never interrupted. The runs that get killed are real processes; the
uninterrupted run and the resumed ones run in this process."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import assert_one_error_line, fit_args, quiet_trainer, run_cli, sentiment_rows, write_csv

from lightbert.callbacks import Checkpointing
from lightbert.checkpoint import read_checkpoint
from lightbert.datamodule import ClassificationDataModule
from lightbert.errors import LightbertError
from lightbert.model import SequenceClassifier

STEPS = 60  # 120 rows, batch 4, 2 epochs


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash-data")
    return (
        write_csv(tmp / "train.csv", ["text", "label"], sentiment_rows(120, seed=3)),
        write_csv(tmp / "val.csv", ["text", "label"], sentiment_rows(8, seed=4)),
    )


def crash_fit_args(base: Path, files, root: Path, *extra: str) -> list[str]:
    """120 rows, batch 4, 2 epochs (60 steps), last.ckpt refreshed at every step."""
    extra = ("--model.learning_rate=0.002", "--checkpoint.last_every_n_steps=1", *extra)
    return fit_args(base, *files, root, *extra, epochs=2, batch=4)


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "lightbert.cli", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_step(path: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until ``path`` holds a checkpoint of at least ``step`` (replaced atomically: a read sees a whole one)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and read_checkpoint(path)["global_step"] >= step):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never reached step {step}"
        time.sleep(0.05)


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    checkpoint = read_checkpoint(root / "version_0" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == STEPS
    return checkpoint["state_dict"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert, run_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    result = run_cli(*crash_fit_args(tiny_bert, run_files, root))
    assert result.code == 0, result.err
    return final_weights(root)


def resume_and_compare(base, files, killed_root: Path, tmp_path: Path, uninterrupted) -> int:
    last = killed_root / "version_0" / "checkpoints" / "last.ckpt"
    step = read_checkpoint(last)["global_step"]  # the latest complete checkpoint loads
    resumed_root = tmp_path / "resumed"
    result = run_cli(*crash_fit_args(base, files, resumed_root, f"--ckpt_path={last}"))
    assert result.code == 0, result.err
    # the resumed run continues the killed run's directory
    weights = final_weights(killed_root) if step < STEPS else read_checkpoint(last)["state_dict"]
    # float rounding of processes with other thread counts (~1e-6 on weights that learn); a resume that lost
    # the optimizer, schedule or data position differs by 1e-3 and more
    assert max_difference(weights, uninterrupted) <= 1e-5
    return step


@pytest.mark.parametrize("seed", [0])
def test_kill_9_at_a_random_moment_then_resume_gives_the_uninterrupted_weights(
    seed, tiny_bert, run_files, tmp_path, uninterrupted
):
    root = tmp_path / "killed"
    process = start(crash_fit_args(tiny_bert, run_files, root))
    wait_for_step(root / "version_0" / "checkpoints" / "last.ckpt", 1, process)
    # A random moment, on purpose: training writes last.ckpt every step, so kills land mid-write too.
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    process.kill()
    process.wait()
    names = [p.name for p in (root / "version_0" / "checkpoints").iterdir()]
    assert all(n.endswith(".ckpt") or (n.startswith(".") and n.endswith(".tmp")) for n in names), names
    step = resume_and_compare(tiny_bert, run_files, root, tmp_path, uninterrupted)
    assert 0 < step <= STEPS


def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_exactly(tiny_bert, run_files, tmp_path, uninterrupted):
    root = tmp_path / "terminated"
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    process = start(crash_fit_args(tiny_bert, run_files, root))
    wait_for_step(last, 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]
    expected = f"error: stopped by SIGTERM (saved {last}; resume with --ckpt_path {last})"
    assert stderr.strip().splitlines()[-1].startswith(expected)
    step = resume_and_compare(tiny_bert, run_files, root, tmp_path, uninterrupted)
    assert 3 <= step < STEPS


def test_a_crash_inside_the_checkpoint_writer_leaves_the_previous_checkpoint(tiny_bert, run_files, tmp_path):
    # The third checkpoint write dies half-way (os._exit, like a kill): the second one must survive intact.
    train, val = run_files
    script = f"""
import os, sys, torch
import lightning.pytorch as pl
from lightbert.callbacks import Checkpointing
from lightbert.datamodule import ClassificationDataModule
from lightbert.model import SequenceClassifier
real_save, calls = torch.save, []
def dying_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        f.write(b"half a checkpoint")
        f.flush()
        os._exit(9)
    return real_save(obj, f, *args, **kwargs)
torch.save = dying_save
pl.seed_everything(0)
dm = ClassificationDataModule(train={str(train)!r}, validation={str(val)!r}, tokenizer={str(tiny_bert)!r}, batch_size=4)
trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
                     callbacks=[Checkpointing(dirpath={str(tmp_path)!r}, save_last=True, last_every_n_steps=1)])
trainer.fit(SequenceClassifier(base={str(tiny_bert)!r}), dm)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 9, result.stderr[-2000:]
    assert read_checkpoint(tmp_path / "last.ckpt")["global_step"] == 2
    leftovers = list(tmp_path.glob(".last.ckpt.*.tmp"))
    assert len(leftovers) == 1  # the partial file never took the checkpoint's name
    # The next run in that directory clears it away.
    pl.seed_everything(0, verbose=False)
    dm = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert), batch_size=4)
    checkpoint = Checkpointing(dirpath=str(tmp_path), save_last=True)
    quiet_trainer(max_steps=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        SequenceClassifier(base=str(tiny_bert)), dm
    )
    assert not list(tmp_path.glob(".last.ckpt.*.tmp"))


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_survives(tiny_bert, run_files, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_disk_full(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    train, val = run_files
    pl.seed_everything(0, verbose=False)
    dm = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert), batch_size=4)
    checkpoint = Checkpointing(dirpath=str(tmp_path), save_last=True, last_every_n_steps=1)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint])
    monkeypatch.setattr(torch, "save", save_until_disk_full)
    with pytest.raises(LightbertError, match=r"disk full while writing checkpoint .*last\.ckpt; the previous one is"):
        trainer.fit(SequenceClassifier(base=str(tiny_bert)), dm)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "last.ckpt")["global_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_an_unwritable_output_directory_stops_before_training(tiny_bert, run_files, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_cli(*crash_fit_args(tiny_bert, run_files, blocker / "runs"))
    assert_one_error_line(result)
    assert result.err_lines == [
        f"error: output directory {blocker / 'runs'} is not writable (Not a directory)"
        " (choose a directory you can write to)"
    ]
