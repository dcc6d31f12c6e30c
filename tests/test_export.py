"""Export to a Hugging Face directory that transformers loads offline, verified, written atomically."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli
from transformers import pipeline

from lightbert import load
from lightbert.errors import LightbertError
from lightbert.export import export

TEXTS = ["a good film", "bad plot and a sad story", "", "the actor was superb " * 30]


@pytest.fixture
def exported(exported_dir):
    return exported_dir


def test_export_writes_a_complete_hugging_face_directory(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    config = json.loads((exported / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert config["problem_type"] == "single_label_classification"
    assert not list(exported.parent.glob(".*partial"))  # no staging left behind


def test_model_card_describes_base_labels_training_metrics_and_versions(exported):
    card = (exported / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    assert "| 0 | negative |" in card and "| 1 | positive |" in card
    assert "max_length" in card and "val_loss" in card
    assert "lightbert 0.1.0" in card and "transformers" in card


def test_round_trip_checkpoint_export_load_gives_the_same_logits(classifier, exported):
    assert torch.allclose(load(exported).logits(TEXTS), classifier.logits(TEXTS), atol=1e-5)


def test_pipeline_loads_the_export_offline_and_agrees_with_predict(classifier, exported):
    theirs = pipeline("text-classification", model=str(exported))(TEXTS, truncation=True)
    ours = classifier.predict(TEXTS)
    assert [t["label"] for t in theirs] == [o["label"] for o in ours]
    assert max(abs(t["score"] - o["score"]) for t, o in zip(theirs, ours, strict=True)) <= 1e-5


def test_export_refuses_a_non_empty_directory_unless_overwrite(trained_checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LightbertError, match="not empty"):
        export(trained_checkpoint, out)
    assert (out / "keep.txt").read_text() == "mine"
    export(trained_checkpoint, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_failed_verification_leaves_nothing_behind(trained_checkpoint, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(LightbertError, match="disagrees with the source"):
        export(trained_checkpoint, out, tolerance=-1.0)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_recipe_checkpoint_exports_with_base(recipe_checkpoint, tiny_bert, tmp_path):
    export(recipe_checkpoint.path, tmp_path / "hf", base=tiny_bert)
    expected = load(recipe_checkpoint.path, base=tiny_bert).logits(TEXTS)
    assert torch.allclose(load(tmp_path / "hf").logits(TEXTS), expected, atol=1e-5)


def test_export_command_reports_the_verification_and_keeps_an_existing_export(trained_checkpoint, tmp_path):
    result = run_cli("export", trained_checkpoint, tmp_path / "cli")
    assert result.code == 0, result.err
    assert "exported to" in result.out and "max logit difference" in result.out
    assert run_cli("export", trained_checkpoint, tmp_path / "cli").code == 2


def _edited_checkpoint(trained_checkpoint, path, edit) -> str:
    data = torch.load(trained_checkpoint, weights_only=True)
    edit(data["lightbert"])
    torch.save(data, path)
    return path


def test_export_strips_the_fields_that_name_remote_code(trained_checkpoint, tmp_path):
    def ask_for_code(section):
        section["hf_config"]["auto_map"] = {"AutoModelForSequenceClassification": "evil.Model"}
        section["hf_config"]["custom_pipelines"] = {"x": {"impl": "evil.Pipe"}}

    source = _edited_checkpoint(trained_checkpoint, tmp_path / "remote.ckpt", ask_for_code)
    export(source, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "auto_map" not in config and "custom_pipelines" not in config
    assert "auto_map" not in json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert load(tmp_path / "out").labels == load(trained_checkpoint).labels  # and lightbert loads it


def test_the_model_card_quotes_a_checkpoints_values_without_letting_them_out(trained_checkpoint, tmp_path):
    def hostile(section):
        section["training_config"] += "```\n<script>alert(1)</script>\n[click](https://evil.example)\n"
        section["data"]["text_column"] = "te`xt <b>"
        names = ["pos</td><script>x()</script>", "[neg](https://evil.example) | ``` "]
        section["labels"] = names
        section["hf_config"]["id2label"] = dict(enumerate(names))
        section["hf_config"]["label2id"] = {name: i for i, name in enumerate(names)}

    export(_edited_checkpoint(trained_checkpoint, tmp_path / "hostile.ckpt", hostile), tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    outside_code = "\n".join(part for i, part in enumerate(card.split("````")) if i % 2 == 0)
    assert "<script>" not in outside_code and "](https://evil" not in outside_code
    assert "````yaml" in card  # the configuration's fence is longer than the backticks inside it
    assert "| 0 | pos&lt;/td&gt;&lt;script&gt;x\\(\\)&lt;/script&gt; |" in card
    assert "- text\\_column: `` te`xt <b> ``" in card
