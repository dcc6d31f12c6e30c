"""Starting from a base that is already a fine-tuned classifier: the head is kept for the same labels (in the
base's order, or reordered to an explicit one), and other labels need a new head."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import quiet_trainer, sentiment_rows, write_csv
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightbert import load
from lightbert.datamodule import ClassificationDataModule
from lightbert.errors import LightbertError
from lightbert.model import SequenceClassifier


def labelled_rows(path, names):
    return write_csv(path, ["text", "label"], [(text, names[int(label)]) for text, label in sentiment_rows(8)])


def fit_from(base, rows, model_class=SequenceClassifier, labels=None, **model_kwargs):
    pl.seed_everything(0, verbose=False)
    data = ClassificationDataModule(
        train=str(rows), validation=str(rows), tokenizer=str(base), batch_size=8, labels=labels
    )
    model = model_class(base=str(base), **model_kwargs)
    quiet_trainer(max_steps=1).fit(model, data)
    return model


@pytest.fixture(scope="module")
def fine_tuned_dir(tiny_bert, tmp_path_factory):
    """A fine-tuned HF classifier whose label order is not alphabetical: positive, negative."""
    directory = tmp_path_factory.mktemp("fine-tuned") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=2, id2label={0: "positive", 1: "negative"}, label2id={"positive": 0, "negative": 1}
    )
    model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(directory))
    return directory


def test_the_same_labels_keep_the_head_and_its_order(fine_tuned_dir, tmp_path):
    captured = {}

    class Probe(SequenceClassifier):
        def on_train_start(self):
            captured["head"] = self.model.classifier.weight.detach().clone()
            super().on_train_start()

    model = fit_from(fine_tuned_dir, labelled_rows(tmp_path / "t.csv", ["positive", "negative"]), Probe)
    assert model.labels == ["positive", "negative"]  # the directory's order, not the data's alphabetical one
    assert torch.equal(captured["head"], load(fine_tuned_dir).model.classifier.weight)


def test_other_labels_need_a_new_head(fine_tuned_dir, tmp_path, capsys):
    rows = labelled_rows(tmp_path / "t.csv", ["sports", "politics"])
    expected = r"was fine-tuned for labels \[positive, negative\], the data has single_label \[politics, sports\]"
    with pytest.raises(LightbertError, match=expected):
        fit_from(fine_tuned_dir, rows)
    model = fit_from(fine_tuned_dir, rows, new_head=True)
    assert "re-initialised classifier.weight, classifier.bias" in capsys.readouterr().err
    assert model.model.config.id2label == {0: "politics", 1: "sports"}


def test_an_explicit_label_order_reorders_the_kept_head(fine_tuned_dir, tmp_path):
    rows = labelled_rows(tmp_path / "t.csv", ["negative", "positive"])
    model = fit_from(fine_tuned_dir, rows, labels=["negative", "positive"], learning_rate=1e-12)
    source = load(fine_tuned_dir).model.classifier.weight
    assert torch.allclose(model.model.classifier.weight, source.flip(0), atol=1e-6)
