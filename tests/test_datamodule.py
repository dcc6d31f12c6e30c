"""The data module: files, splits, labels and tokenization for training."""

from __future__ import annotations

import pytest
import torch
from helpers import sentiment_rows, write_csv

from lightbert.datamodule import ClassificationDataModule
from lightbert.errors import LightbertError


def test_task_can_be_set_explicitly(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [("good", "1"), ("bad", "0"), ("ok", "2")])
    dm = ClassificationDataModule(train=str(path), validation=str(path), task="regression", tokenizer=str(tiny_bert))
    dm.setup("fit")
    assert dm.task == "regression" and dm.datasets["train"].targets.dtype == torch.float32


def test_validation_labels_unseen_in_training_are_an_error(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "t.csv", ["text", "label"], [("good", "pos"), ("bad", "neg")])
    val = write_csv(tmp_path / "v.csv", ["text", "label"], [("meh", "neutral")])
    dm = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert))
    with pytest.raises(LightbertError, match=r"v\.csv has labels the model does not know: 1 label: neutral"):
        dm.setup("fit")


def test_seeded_validation_split_is_reproducible_and_disjoint(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "t.csv", ["text", "label"], sentiment_rows(50))

    def split(seed):
        dm = ClassificationDataModule(train=str(path), val_fraction=0.2, seed=seed, tokenizer=str(tiny_bert))
        dm.setup("fit")
        return dm.datasets["train"].features["input_ids"], dm.datasets["validation"].features["input_ids"]

    train_a, val_a = split(1)
    train_b, val_b = split(1)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 10 and len(train_a) == 40
    assert split(2)[1] != val_a


def test_text_pairs_are_tokenized_as_pairs_with_segment_ids(tmp_path, tiny_bert):
    path = write_csv(
        tmp_path / "p.csv", ["sentence1", "sentence2", "label"], [("good film", "bad plot", "1.5"), ("a", "b", "2.0")]
    )
    dm = ClassificationDataModule(train=str(path), validation=str(path), tokenizer=str(tiny_bert))
    dm.setup("fit")
    features = dm.datasets["train"].features
    assert dm.paired and dm.task == "regression"
    # [CLS] good film [SEP] bad plot [SEP]: segment 0 for the first text, 1 for the second
    assert features["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1]


def test_max_length_is_clamped_to_the_position_limit(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [("good " * 200, "1"), ("bad", "0")])
    dm = ClassificationDataModule(train=str(path), validation=str(path), max_length=4096, tokenizer=str(tiny_bert))
    dm.setup("fit")
    assert dm.max_length == 64  # the tiny model has 64 positions
    assert max(dm.datasets["train"].lengths) == 64
