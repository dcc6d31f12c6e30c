"""Exact resume: an interrupted and resumed run ends where the uninterrupted one does, with dropout on."""

from __future__ import annotations

import contextlib
import copy

import lightning.pytorch as pl
import pytest
import torch
from helpers import quiet_trainer, sentiment_rows, write_csv

from lightbert.callbacks import Checkpointing, StopEarly
from lightbert.datamodule import ClassificationDataModule
from lightbert.model import SequenceClassifier


class Interrupted(Exception):
    pass


class Recorder(pl.Callback):
    """Records, per optimizer step, the learning rate and the sample indices trained on; can interrupt the run."""

    def __init__(self, stop_before_step: int | None = None):
        self.lrs: list[float] = []
        self.samples: list[list[int]] = []
        self.stop_before_step = stop_before_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        # Checkpoint callbacks run last in each hook, so the step-k checkpoint exists when step k+1 starts.
        if self.stop_before_step is not None and trainer.global_step == self.stop_before_step:
            raise Interrupted
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.samples.append(batch["index"].tolist())


def files(directory):
    """The module's data: 40 training rows (10 batches of 4) and 8 validation rows."""
    return (
        write_csv(directory / "train.csv", ["text", "label"], sentiment_rows(40, seed=1)),
        write_csv(directory / "val.csv", ["text", "label"], sentiment_rows(8, seed=2)),
    )


def multi_label_files(directory):
    """Multi-label rows: every text is `film`, the positive ones `good` too."""
    rows = [(text, "film,good" if label == "1" else "film") for text, label in sentiment_rows(48, seed=1)]
    return (
        write_csv(directory / "train.csv", ["text", "labels"], rows[:40]),
        write_csv(directory / "val.csv", ["text", "labels"], rows[40:]),
    )


def run(base, data_files, ckpt_dir, recorder, ckpt_path=None, last_every_n_steps=None, options=None):
    """Two epochs of 10 steps; ``options``: the module's keyword arguments, ``stop_early`` (StopEarly's) and
    ``data`` (the data module's)."""
    pl.seed_everything(123, verbose=False)
    options = dict(options or {})
    stopper = [StopEarly(**options.pop("stop_early"))] if "stop_early" in options else []
    data_options = options.pop("data", {})
    train, val = data_files
    dm = ClassificationDataModule(
        train=str(train), validation=str(val), tokenizer=str(base), batch_size=4, **data_options
    )
    model = SequenceClassifier(base=str(base), learning_rate=2e-3, warmup_steps=3, **options)
    checkpoint = Checkpointing(
        dirpath=str(ckpt_dir), monitor="val_loss", save_last=True, save_top_k=1, last_every_n_steps=last_every_n_steps
    )
    trainer = quiet_trainer(
        max_epochs=2, callbacks=[recorder, checkpoint, *stopper], enable_checkpointing=True, num_sanity_val_steps=2
    )
    with contextlib.suppress(Interrupted):
        trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer


def max_param_difference(a: SequenceClassifier, b: SequenceClassifier) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert, tmp_path_factory):
    """One uninterrupted run for the whole module: the reference every resumed run must end at."""
    tmp = tmp_path_factory.mktemp("straight")
    recorder = Recorder()
    model, trainer = run(tiny_bert, files(tmp), tmp / "checkpoints", recorder)
    assert trainer.global_step == 20  # 40 rows, batch 4, 2 epochs
    return model, recorder, tmp / "checkpoints" / "last.ckpt"


def test_resume_after_an_epoch_matches_the_uninterrupted_run(tiny_bert, tmp_path, uninterrupted):
    straight_model, straight, _ = uninterrupted
    data = files(tmp_path)
    first = Recorder(stop_before_step=10)  # the first step of epoch 1: epoch 0 and its checkpoint are done
    run(tiny_bert, data, tmp_path / "a", first)
    assert len(first.lrs) == 10
    assert torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["global_step"] == 10
    second = Recorder()
    resumed_model, trainer = run(tiny_bert, data, tmp_path / "b", second, ckpt_path=str(tmp_path / "a" / "last.ckpt"))
    assert trainer.global_step == 20
    assert first.lrs + second.lrs == straight.lrs
    assert first.samples + second.samples == straight.samples
    assert max_param_difference(resumed_model, straight_model) <= 1e-6


def test_resume_mid_epoch_sees_the_same_samples_and_ends_with_the_same_weights(tiny_bert, tmp_path, uninterrupted):
    straight_model, straight, _ = uninterrupted
    data = files(tmp_path)
    first = Recorder(stop_before_step=7)  # 7 of the epoch's 10 batches done; last.ckpt refreshed at step 7
    run(tiny_bert, data, tmp_path / "a", first, last_every_n_steps=7)
    assert torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["global_step"] == 7
    second = Recorder()
    resumed_model, trainer = run(tiny_bert, data, tmp_path / "b", second, ckpt_path=str(tmp_path / "a" / "last.ckpt"))
    assert second.samples == straight.samples[7:]  # no repeats, no skips
    assert first.lrs + second.lrs == straight.lrs
    assert trainer.global_step == 20
    assert max_param_difference(resumed_model, straight_model) <= 1e-6


def test_resume_restores_optimizer_scheduler_and_counters(tiny_bert, sentiment_files, tmp_path):
    run(tiny_bert, sentiment_files, tmp_path / "a", Recorder(stop_before_step=10))
    saved = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    seen = {}

    class AtStart(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["step"] = trainer.global_step
            seen["epoch"] = trainer.current_epoch
            # copies: training goes on after this hook and updates the optimizer state in place
            seen["optimizer"] = copy.deepcopy(trainer.optimizers[0].state_dict())
            seen["scheduler"] = copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict())

    pl.seed_everything(123, verbose=False)
    train, val = sentiment_files
    dm = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert), batch_size=4)
    trainer = quiet_trainer(max_epochs=2, callbacks=[AtStart()], limit_train_batches=1)
    trainer.fit(SequenceClassifier(base=str(tiny_bert)), dm, ckpt_path=str(tmp_path / "a" / "last.ckpt"))
    assert seen["step"] == saved["global_step"] == 10 and seen["epoch"] == 1
    assert seen["scheduler"]["last_epoch"] == saved["lr_schedulers"][0]["last_epoch"] == 10
    for index, state in saved["optimizer_states"][0]["state"].items():
        assert torch.equal(seen["optimizer"]["state"][index]["exp_avg_sq"], state["exp_avg_sq"])
        assert torch.equal(seen["optimizer"]["state"][index]["step"], state["step"])


def test_resuming_a_finished_run_trains_nothing(tiny_bert, tmp_path, uninterrupted):
    straight_model, _, last = uninterrupted
    recorder = Recorder()
    model, trainer = run(tiny_bert, files(tmp_path), tmp_path / "again", recorder, ckpt_path=str(last))
    assert recorder.lrs == [] and trainer.global_step == 20
    assert max_param_difference(model, straight_model) == 0.0


@pytest.mark.parametrize(
    ("data", "options"),
    [
        (files, {"class_weights": "balanced", "stop_early": {"patience": 3}}),
        (multi_label_files, {"class_weights": "balanced", "tune_thresholds": True, "data": {"task": "multi_label"}}),
        (files, {"data": {"long_texts": "chunk", "max_length": 6, "stride": 1}}),
    ],
    ids=["class-weights-and-early-stopping", "multi-label-weights-and-thresholds", "long-texts-in-windows"],
)
def test_resume_mid_epoch_is_exact_with_the_training_options_on(tiny_bert, tmp_path, data, options):
    straight = Recorder()
    straight_model, straight_trainer = run(tiny_bert, data(tmp_path), tmp_path / "straight", straight, options=options)
    first = Recorder(stop_before_step=13)
    run(tiny_bert, data(tmp_path), tmp_path / "a", first, last_every_n_steps=13, options=options)
    second = Recorder()
    last = str(tmp_path / "a" / "last.ckpt")
    resumed_model, trainer = run(tiny_bert, data(tmp_path), tmp_path / "b", second, ckpt_path=last, options=options)
    assert trainer.global_step == straight_trainer.global_step > 13
    assert first.lrs + second.lrs == straight.lrs and first.samples + second.samples == straight.samples
    assert max_param_difference(resumed_model, straight_model) == 0.0
    assert resumed_model.loss_weights == straight_model.loss_weights
    assert resumed_model.thresholds == straight_model.thresholds
