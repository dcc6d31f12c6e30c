"""Smoke tests with the real bundled all-MiniLM-L6-v2 on real rows of ../shared/data: a handful of steps each."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import quiet_trainer, shared_sample

from lightbert import load
from lightbert.callbacks import Checkpointing
from lightbert.datamodule import ClassificationDataModule
from lightbert.model import SequenceClassifier

pytestmark = pytest.mark.smoke


def fit_minilm(tmp_path, train, val, steps=4, **data_kwargs):
    pl.seed_everything(0, verbose=False)
    dm = ClassificationDataModule(train=str(train), validation=str(val), batch_size=8, max_length=64, **data_kwargs)
    model = SequenceClassifier(learning_rate=1e-4)
    checkpoint = Checkpointing(dirpath=str(tmp_path / "ckpt"), monitor="val_loss", save_last=True)
    trainer = quiet_trainer(
        max_steps=steps,
        val_check_interval=steps,
        limit_val_batches=2,
        callbacks=[checkpoint],
        enable_checkpointing=True,
    )
    trainer.fit(model, dm)
    return model, trainer


def test_minilm_fine_tunes_on_sst2_and_its_checkpoint_reproduces_it(tmp_path, shared_data):
    train = shared_sample(shared_data / "sst2" / "train.tsv", tmp_path / "train.tsv", 64)
    val = shared_sample(shared_data / "sst2" / "validation.tsv", tmp_path / "val.tsv", 32)
    model, trainer = fit_minilm(tmp_path, train, val)
    assert trainer.global_step == 4 and model.model.config.model_type == "bert"
    assert model.model.config.id2label == {0: "0", 1: "1"}
    assert "val_accuracy" in trainer.callback_metrics
    classifier = load(tmp_path / "ckpt" / "last.ckpt")
    inputs = classifier.tokenizer(["a gorgeous, witty film", "dull and lifeless"], padding=True, return_tensors="pt")
    model.model.eval()
    with torch.inference_mode():
        expected = model.model(**inputs).logits
    assert torch.allclose(classifier.logits(["a gorgeous, witty film", "dull and lifeless"]), expected, atol=1e-5)
    assert classifier.labels == ["0", "1"]


def test_minilm_learns_agnews_string_labels(tmp_path, shared_data):
    train = shared_sample(shared_data / "agnews" / "train.tsv", tmp_path / "train.tsv", 64)
    val = shared_sample(shared_data / "agnews" / "train.tsv", tmp_path / "val.tsv", 32, skip=64)
    model, _ = fit_minilm(tmp_path, train, val, steps=2)
    assert model.model.config.id2label == {0: "Business", 1: "Sci/Tech", 2: "Sports", 3: "World"}


def test_minilm_regresses_stsb_sentence_pairs(tmp_path, shared_data):
    train = shared_sample(shared_data / "stsb" / "train.tsv", tmp_path / "train.tsv", 48)
    val = shared_sample(shared_data / "stsb" / "validation.tsv", tmp_path / "val.tsv", 32)
    model, trainer = fit_minilm(tmp_path, train, val, steps=2, text_column=7, text_pair_column=8, label_column=9)
    assert model.task == "regression" and model.model.config.problem_type == "regression"
    assert {"val_mse", "val_pearson", "val_spearman"} <= set(trainer.callback_metrics)
