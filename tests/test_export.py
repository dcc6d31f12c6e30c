"""Export to a Hugging Face directory, `lightbert inspect`, and continuing training from a fine-tuned HF dir."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer, sentiment_rows, write_csv
from test_load import train_recipe
from test_predict import train_checkpoint
from transformers import pipeline

from lightbert import load
from lightbert.cli import main
from lightbert.datamodule import ClassificationDataModule
from lightbert.describe import describe
from lightbert.errors import LightbertError
from lightbert.export import export
from lightbert.model import SequenceClassifier

TEXTS = ["a good film", "bad plot and a sad story", "", "the actor was superb " * 30]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("export")
    rows = write_csv(tmp / "t.csv", ["text", "label"], [(t, ["negative", "positive"][int(l)]) for t, l in sentiment_rows(24)])
    return train_checkpoint(tiny_bert, tmp, rows)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "model"
    export(checkpoint, out)
    return out


def test_export_writes_a_complete_hugging_face_directory(exported):
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= {p.name for p in exported.iterdir()}
    config = json.loads((exported / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"] == {"negative": 0, "positive": 1}
    assert config["problem_type"] == "single_label_classification"
    assert not list(exported.parent.glob(".*partial"))  # no staging left behind


def test_model_card_describes_base_labels_training_metrics_and_versions(exported, tiny_bert):
    card = (exported / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    assert "| 0 | negative |" in card and "| 1 | positive |" in card
    assert "max_length" in card and "val_loss" in card
    assert "lightbert 0.1.0" in card and "transformers" in card


def test_round_trip_checkpoint_export_load_gives_the_same_logits(checkpoint, exported):
    assert torch.allclose(load(exported).logits(TEXTS), load(checkpoint).logits(TEXTS), atol=1e-5)


def test_pipeline_loads_the_export_offline_and_agrees_with_predict(checkpoint, exported):
    classify = pipeline("text-classification", model=str(exported))
    theirs = classify(TEXTS, truncation=True)
    ours = load(checkpoint).predict(TEXTS)
    assert [t["label"] for t in theirs] == [o["label"] for o in ours]
    assert max(abs(t["score"] - o["score"]) for t, o in zip(theirs, ours)) <= 1e-5


def test_export_refuses_a_non_empty_directory_unless_overwrite(checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LightbertError, match="not empty"):
        export(checkpoint, out)
    assert (out / "keep.txt").read_text() == "mine"
    export(checkpoint, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_failed_verification_leaves_nothing_behind(checkpoint, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(LightbertError, match="disagrees with the source"):
        export(checkpoint, out, tolerance=-1.0)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_recipe_checkpoint_exports_with_base(tiny_bert, tmp_path):
    path, module, tokenizer = train_recipe(tiny_bert, tmp_path)
    export(path, tmp_path / "hf", base=tiny_bert)
    assert torch.allclose(load(tmp_path / "hf").logits(TEXTS), load(path, base=tiny_bert).logits(TEXTS), atol=1e-5)


def test_export_command_reports_the_verification(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "exported to" in out and "max logit difference" in out
    assert main(["export", str(checkpoint), str(tmp_path / "cli")]) == 2


# -- inspect --------------------------------------------------------------------------------------------------------


def test_inspect_describes_a_lightbert_checkpoint(checkpoint, capsys):
    info = describe(checkpoint)
    assert info["kind"] == "lightbert" and info["labels"] == ["negative", "positive"] and info["resumable"]
    assert info["architecture"] == "bert" and info["epoch"] == 0 and info["global_step"] == 3
    assert main(["inspect", str(checkpoint)]) == 0
    text = capsys.readouterr().out
    assert "lightbert checkpoint" in text and "resumable" in text and "negative, positive" in text


def test_inspect_describes_hugging_face_and_recipe_files(exported, tiny_bert, tmp_path, capsys):
    info = describe(exported)
    assert info["kind"] == "huggingface" and not info["resumable"] and info["labels"] == ["negative", "positive"]
    path, _, _ = train_recipe(tiny_bert, tmp_path)
    assert main(["inspect", str(path), "--json", "true"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "lightning" and info["num_labels"] == 3 and info["architecture"] == "bert" and info["resumable"]


# -- continuing from a fine-tuned Hugging Face directory -------------------------------------------------------------


def fit_from(base, rows, **model_kwargs):
    pl.seed_everything(0, verbose=False)
    dm = ClassificationDataModule(train=str(rows), validation=str(rows), tokenizer=str(base), batch_size=8)
    model = SequenceClassifier(base=str(base), **model_kwargs)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(model, dm)
    return model


@pytest.fixture
def reversed_labels_dir(tiny_bert, tmp_path):
    """A fine-tuned-looking HF classifier whose label order is not alphabetical."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = tmp_path / "reversed"
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=2, id2label={0: "positive", 1: "negative"}, label2id={"positive": 0, "negative": 1})
    model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(directory))
    return directory


def test_continuing_with_the_same_labels_keeps_the_head_and_its_order(reversed_labels_dir, tmp_path):
    exported = reversed_labels_dir
    rows = write_csv(tmp_path / "t.csv", ["text", "label"], [(t, ["positive", "negative"][int(l)]) for t, l in sentiment_rows(8)])
    captured = {}

    class Probe(SequenceClassifier):
        def on_train_start(self):
            captured["head"] = self.model.classifier.weight.detach().clone()
            super().on_train_start()

    pl.seed_everything(0, verbose=False)
    dm = ClassificationDataModule(train=str(rows), validation=str(rows), tokenizer=str(exported), batch_size=8)
    model = Probe(base=str(exported))
    quiet_trainer(max_steps=1).fit(model, dm)
    assert model.labels == ["positive", "negative"]  # the directory's order, not the data's alphabetical one
    assert torch.equal(captured["head"], load(exported).model.classifier.weight)


def test_continuing_with_other_labels_needs_new_head(exported, tmp_path, capsys):
    rows = write_csv(tmp_path / "t.csv", ["text", "label"], [(t, ["sports", "politics"][int(l)]) for t, l in sentiment_rows(8)])
    with pytest.raises(LightbertError, match=r"fine-tuned for single_label_classification \[negative, positive\].*\[politics, sports\]"):
        fit_from(exported, rows)
    model = fit_from(exported, rows, new_head=True)
    assert "re-initialised classifier.weight, classifier.bias" in capsys.readouterr().err
    assert model.model.config.id2label == {0: "politics", 1: "sports"}


def test_explicit_label_order_reorders_the_kept_head(exported, tmp_path):
    rows = write_csv(tmp_path / "t.csv", ["text", "label"], [(t, ["negative", "positive"][int(l)]) for t, l in sentiment_rows(8)])
    pl.seed_everything(0, verbose=False)
    dm = ClassificationDataModule(train=str(rows), validation=str(rows), tokenizer=str(exported), batch_size=8,
                                  labels=["positive", "negative"])
    model = SequenceClassifier(base=str(exported), learning_rate=1e-12)
    quiet_trainer(max_steps=1).fit(model, dm)
    source = load(exported).model.classifier.weight
    assert torch.allclose(model.model.classifier.weight, source.flip(0), atol=1e-6)
