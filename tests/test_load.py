"""lightbert.load tells apart lightbert checkpoints, HF directories and recipe checkpoints (through
lightbert.sources.identify), and each loads the logits the model that wrote it computes."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    copy_directory,
    make_base_model,
    quiet_trainer,
    reference_logits,
    sentiment_rows,
    train_recipe,
    write_csv,
)
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightbert import load
from lightbert.callbacks import Checkpointing
from lightbert.datamodule import ClassificationDataModule
from lightbert.errors import LightbertError
from lightbert.model import SequenceClassifier
from lightbert.sources import identify

TEXTS = ["a good film", "bad plot and a sad story", "", "the actor was superb"]


# -- 1. lightbert checkpoints ------------------------------------------------------------------------------------------


def test_lightbert_checkpoint_loads_the_logits_of_the_module_that_trained(tiny_bert, tmp_path):
    rows = [(text, ["neg", "pos"][int(label)]) for text, label in sentiment_rows(24)]
    path = write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    pl.seed_everything(0, verbose=False)
    model = SequenceClassifier(base=str(tiny_bert), learning_rate=1e-3)
    data = ClassificationDataModule(train=str(path), validation=str(path), tokenizer=str(tiny_bert), batch_size=8)
    checkpoint = Checkpointing(dirpath=str(tmp_path), save_last=True)
    quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(model, data)
    classifier = load(tmp_path / "last.ckpt")
    assert classifier.info.kind == "lightbert" and classifier.info.global_step == 3
    assert classifier.labels == ["neg", "pos"] and classifier.task == "single_label"
    assert torch.allclose(classifier.logits(TEXTS), reference_logits(model.model, model.tokenizer, TEXTS), atol=1e-5)
    assert not classifier.model.training


def test_a_damaged_lightbert_section_is_refused_the_same_way_by_every_reader(trained_checkpoint, tmp_path):
    data = torch.load(trained_checkpoint, weights_only=True)
    del data["lightbert"]["tokenizer_files"]
    torch.save(data, tmp_path / "damaged.ckpt")
    with pytest.raises(LightbertError, match="damaged lightbert section \\(no tokenizer files\\)"):
        identify(tmp_path / "damaged.ckpt")
    with pytest.raises(LightbertError, match="damaged lightbert section"):
        load(tmp_path / "damaged.ckpt")


# -- 2. Hugging Face directories -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_bert):
    directory = tmp_path_factory.mktemp("hf") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}
    )
    model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(directory))
    return directory, model


def test_huggingface_directory_loads_with_its_labels(hf_dir):
    directory, model = hf_dir
    classifier = load(directory)
    assert classifier.info.kind == "huggingface" and classifier.labels == ["a", "b", "c"]
    expected = reference_logits(model, AutoTokenizer.from_pretrained(str(directory)), TEXTS)
    assert torch.allclose(classifier.logits(TEXTS), expected, atol=1e-5)


def test_legacy_pytorch_model_bin_loads(hf_dir, tmp_path):
    directory, model = hf_dir
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (legacy / name).write_bytes((directory / name).read_bytes())
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    assert torch.allclose(load(legacy).logits(TEXTS), load(directory).logits(TEXTS), atol=1e-6)


def test_pickled_bin_that_runs_code_is_refused(hf_dir, tmp_path):
    directory, _ = hf_dir
    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (evil / name).write_bytes((directory / name).read_bytes())
    torch.save({"bert.embeddings.word_embeddings.weight": Payload()}, evil / "pytorch_model.bin")
    with pytest.raises(LightbertError, match="could run code"):
        load(evil)
    assert not sentinel.exists()


def test_directory_asking_for_remote_code_is_refused(hf_dir, tmp_path):
    remote = copy_directory(hf_dir[0], tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.Evil"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(LightbertError, match="remote code"):
        load(remote)


def test_a_directory_without_tokenizer_files_says_so(hf_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_dir[0] / name).read_bytes())
    with pytest.raises(LightbertError, match="has no tokenizer files"):
        load(bare)


# -- 3. recipe checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["model", "bert", "net"])
@pytest.mark.parametrize("hparams", [True, False])
def test_recipe_checkpoint_loads_under_any_attribute_with_base(attribute, hparams, tiny_bert, tmp_path):
    recipe = train_recipe(tiny_bert, tmp_path, attribute=attribute, hparams=hparams)
    classifier = load(recipe.path, base=tiny_bert)
    assert classifier.info.kind == "recipe" and classifier.info.prefix == f"{attribute}."
    assert classifier.model.config.num_labels == 3  # read from the classifier weights
    expected = reference_logits(recipe.module.classifier, recipe.tokenizer, TEXTS)
    assert torch.allclose(classifier.logits(TEXTS), expected, atol=1e-5)


def test_recipe_checkpoint_finds_its_base_through_a_hyperparameter(recipe_checkpoint, tiny_bert):
    classifier = load(recipe_checkpoint.path)  # hyper_parameters["model_dir"] names an existing local directory
    assert classifier.info.base == str(tiny_bert)
    expected = reference_logits(recipe_checkpoint.module.classifier, recipe_checkpoint.tokenizer, TEXTS)
    assert torch.allclose(classifier.logits(TEXTS), expected, atol=1e-5)


def test_recipe_checkpoint_without_base_or_hyperparameters_asks_for_base(tiny_bert, tmp_path):
    recipe = train_recipe(tiny_bert, tmp_path, hparams=False)
    with pytest.raises(LightbertError, match="pass --base DIR"):
        load(recipe.path)


def test_recipe_checkpoint_with_other_weights_lists_them(tiny_bert, tmp_path):
    recipe = train_recipe(tiny_bert, tmp_path, extra=True)
    with pytest.raises(LightbertError, match=r"unexpected 2: projection\.bias, projection\.weight"):
        load(recipe.path, base=tiny_bert)


def test_recipe_checkpoint_with_a_base_of_another_architecture_is_refused(recipe_checkpoint, tiny_distilbert):
    with pytest.raises(LightbertError, match="distilbert"):
        load(recipe_checkpoint.path, base=tiny_distilbert)


def test_old_position_ids_buffers_are_tolerated(recipe_checkpoint, tiny_bert, tmp_path):
    checkpoint = torch.load(recipe_checkpoint.path, weights_only=True)
    checkpoint["state_dict"]["model.bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    classifier = load(tmp_path / "old.ckpt", base=tiny_bert)
    expected = reference_logits(recipe_checkpoint.module.classifier, recipe_checkpoint.tokenizer, TEXTS)
    assert torch.allclose(classifier.logits(TEXTS), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_recipe_checkpoints_of_other_architectures_load(arch, request, tmp_path):
    base = request.getfixturevalue(f"tiny_{arch}")
    recipe = train_recipe(base, tmp_path, attribute="encoder", num_labels=2)
    expected = reference_logits(recipe.module.classifier, recipe.tokenizer, TEXTS)
    assert torch.allclose(load(recipe.path, base=base).logits(TEXTS), expected, atol=1e-5)


# -- any path ----------------------------------------------------------------------------------------------------------


def test_missing_url_and_configless_paths_are_refused(tmp_path):
    with pytest.raises(LightbertError, match="not found"):
        load(tmp_path / "nothing.ckpt")
    with pytest.raises(LightbertError, match="not URLs"):
        load("https://example.com/x.ckpt")
    with pytest.raises(LightbertError, match=r"no config\.json"):
        load(tmp_path)


def test_bfloat16_hf_directory_loads_in_float32(tmp_path):
    directory = make_base_model(tmp_path / "bf16", dtype="bfloat16")
    model = AutoModelForSequenceClassification.from_pretrained(str(directory), num_labels=2, dtype=torch.bfloat16)
    model.save_pretrained(str(directory))
    assert {p.dtype for p in load(directory).model.parameters()} == {torch.float32}
