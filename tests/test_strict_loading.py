"""Every Hugging Face directory is loaded strictly: a directory without a trained classification head, or with
weights that do not fit its config, is refused by everything that uses a model (only fit starts from one, with a new
head, and says so); inspect tells the head's real output count and warns of a tokenizer that makes text unknown."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_one_error_line, fit_args, free_port, run_cli, write_csv

import lightbert
from lightbert.errors import LightbertError
from lightbert.inspection import format_inspection, inspect_model


def _tokenizer_into(source: Path, target: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)


def _save(model: torch.nn.Module, source: Path, target: Path) -> Path:
    model.save_pretrained(str(target))
    _tokenizer_into(source, target)
    return target


@pytest.fixture(scope="module")
def masked_lm_dir(tiny_bert, tmp_path_factory) -> Path:
    from transformers import AutoConfig, BertForMaskedLM

    torch.manual_seed(0)
    return _save(BertForMaskedLM(AutoConfig.from_pretrained(tiny_bert)), tiny_bert, tmp_path_factory.mktemp("mlm"))


@pytest.fixture(scope="module")
def classifier_dir(tiny_bert, tmp_path_factory) -> Path:
    """A tiny BERT classifier with a (random but saved) head for labels neg and pos."""
    from transformers import AutoConfig, BertForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_bert, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    torch.manual_seed(0)
    return _save(BertForSequenceClassification(config), tiny_bert, tmp_path_factory.mktemp("classifier"))


@pytest.fixture
def foreign_weights_dir(classifier_dir, tmp_path) -> Path:
    """A valid config beside a model.safetensors that holds one unrelated tensor."""
    from safetensors.torch import save_file

    directory = Path(shutil.copytree(classifier_dir, tmp_path / "foreign"))
    save_file({"w": torch.zeros(4)}, str(directory / "model.safetensors"))
    return directory


@pytest.fixture
def fifty_outputs_two_names_dir(tiny_bert, tmp_path) -> Path:
    """A classifier whose head has 50 outputs while config.json's id2label names 2."""
    from transformers import AutoConfig, BertForSequenceClassification

    directory = _save(
        BertForSequenceClassification(AutoConfig.from_pretrained(tiny_bert, num_labels=50)), tiny_bert, tmp_path / "m"
    )
    config = json.loads((directory / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "neg", "1": "pos"}, {"neg": 0, "pos": 1}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture
def unknown_tokenizer_dir(classifier_dir, tmp_path) -> Path:
    """The classifier with a tokenizer whose vocabulary holds only special tokens: every word is [UNK]."""
    from transformers import BertTokenizerFast

    directory = Path(shutil.copytree(classifier_dir, tmp_path / "unk"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink(missing_ok=True)
    (directory / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    BertTokenizerFast(vocab=str(directory / "vocab.txt")).save_pretrained(str(directory))
    return directory


def test_load_refuses_a_directory_without_a_classification_head(tiny_bert):
    with pytest.raises(LightbertError) as raised:
        lightbert.load(tiny_bert)
    assert "has no trained classification head (it is a BertModel)" in raised.value.problem
    assert f"lightbert fit --model.base {tiny_bert}" in raised.value.hint


@pytest.mark.parametrize("command", ["predict", "serve", "evaluate", "export"])
def test_every_command_that_uses_a_model_refuses_a_headless_directory(command, tiny_bert, tmp_path):
    extra = {
        "predict": ["hello"],
        "serve": ["--port", free_port()],
        "evaluate": ["--input", write_csv(tmp_path / "e.csv", ["text", "label"], [("good", "1"), ("bad", "0")])],
        "export": [tmp_path / "out"],
    }[command]
    result = run_cli(command, tiny_bert, *extra)
    assert_one_error_line(result, "has no trained classification head", "fine-tune it first")
    assert not (tmp_path / "out").exists()


def test_a_masked_lm_directory_is_refused_as_headless(masked_lm_dir):
    with pytest.raises(LightbertError, match=r"no trained classification head \(it is a BertForMaskedLM"):
        lightbert.load(masked_lm_dir)


def test_weights_that_do_not_fit_the_config_are_refused_listing_them(foreign_weights_dir):
    result = run_cli("predict", foreign_weights_dir, "hello")
    assert_one_error_line(result, "does not match its model config", "missing 4", "bert.embeddings", "unexpected 1: w")


def test_a_head_with_other_outputs_than_its_config_is_refused_with_the_shapes(fifty_outputs_two_names_dir):
    with pytest.raises(LightbertError, match=r"wrong shape 2: classifier.bias \(50,\) vs \(2,\)"):
        lightbert.load(fifty_outputs_two_names_dir)


def test_a_complete_classifier_directory_loads(classifier_dir):
    assert lightbert.load(classifier_dir).labels == ["neg", "pos"]


def test_fit_from_a_headless_directory_says_it_starts_a_new_head(tiny_bert, sentiment_files, tmp_path):
    result = run_cli(*fit_args(tiny_bert, *sentiment_files, tmp_path / "runs", "--trainer.max_steps=1"))
    assert result.code == 0, result.err[-2000:]
    assert "new classification head: initialised classifier.bias, classifier.weight" in result.out


def test_fit_from_a_masked_lm_directory_drops_its_pretraining_head(masked_lm_dir, sentiment_files, tmp_path):
    result = run_cli(*fit_args(masked_lm_dir, *sentiment_files, tmp_path / "runs", "--trainer.max_steps=1"))
    assert result.code == 0, result.err[-2000:]
    assert "initialised bert.pooler.dense.bias, bert.pooler.dense.weight, classifier.bias" in result.out
    assert "cls.predictions" not in result.err


def test_fit_refuses_a_base_whose_weights_do_not_fit_its_config(foreign_weights_dir, sentiment_files, tmp_path):
    result = run_cli(*fit_args(foreign_weights_dir, *sentiment_files, tmp_path / "runs", "--model.new_head=true"))
    assert_one_error_line(result, "does not match its model config", "missing 37: bert.embeddings")
    assert not (tmp_path / "runs").exists()


def test_inspect_says_a_headless_directory_has_no_classification_head(tiny_bert):
    info = inspect_model(tiny_bert)
    assert info["head"] is False and info["num_labels"] is None
    text = format_inspection(info)
    assert "labels:" not in text
    assert "warning: no classification head" in text


def test_inspect_reports_the_heads_real_output_count_and_the_disagreeing_labels(fifty_outputs_two_names_dir):
    text = format_inspection(inspect_model(fifty_outputs_two_names_dir))
    assert "labels: 50 (neg, pos)" in text
    assert "warning: config.json's id2label names 2 labels, the head has 50 outputs" in text


def test_inspect_of_a_trained_checkpoint_counts_its_heads_outputs(trained_checkpoint):
    info = inspect_model(trained_checkpoint)
    assert info["num_labels"] == 2 and info["warnings"] == []


def test_inspect_warns_of_a_tokenizer_that_makes_text_unknown_tokens(unknown_tokenizer_dir):
    text = format_inspection(inspect_model(unknown_tokenizer_dir))
    assert "warning: the tokenizer makes 100% of the tokens of an English sample its unknown token [UNK]" in text


def test_fit_warns_of_a_tokenizer_that_makes_the_data_unknown_tokens(unknown_tokenizer_dir, sentiment_files, tmp_path):
    args = fit_args(unknown_tokenizer_dir, *sentiment_files, tmp_path / "runs", "--trainer.max_steps=1")
    result = run_cli(*args, "--model.new_head=true")
    assert result.code == 0, result.err[-2000:]
    warnings = [line for line in result.err_lines if "unknown token" in line]
    assert warnings == [
        "warning: the tokenizer makes 100% of the tokens of train.csv its unknown token [UNK]; a model cannot tell"
        " such texts apart (check that the tokenizer files belong to the model, and its vocabulary to the language)"
    ]
