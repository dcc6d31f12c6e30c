"""lightbert.load tells apart lightbert checkpoints, HF directories and Lightning checkpoints of the common
recipe, and each loads the logits the model that wrote it computes."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from conftest import make_base_model, quiet_trainer, sentiment_rows, write_csv
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightbert import load
from lightbert.callbacks import Checkpointing
from lightbert.datamodule import ClassificationDataModule
from lightbert.errors import LightbertError
from lightbert.model import SequenceClassifier

TEXTS = ["a good film", "bad plot and a sad story", "", "the actor was superb"]


def reference_logits(model, tokenizer, texts=TEXTS):
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])


# -- 1. lightbert checkpoints ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lightbert_ckpt(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("lb")
    path = write_csv(tmp / "t.csv", ["text", "label"], [(t, ["neg", "pos"][int(l)]) for t, l in sentiment_rows(24)])
    pl.seed_everything(0, verbose=False)
    model = SequenceClassifier(base=str(tiny_bert), learning_rate=1e-3)
    dm = ClassificationDataModule(train=str(path), validation=str(path), tokenizer=str(tiny_bert), batch_size=8)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[Checkpointing(dirpath=str(tmp), save_last=True)])
    trainer.fit(model, dm)
    return tmp / "last.ckpt", model


def test_lightbert_checkpoint_loads_the_trained_logits(lightbert_ckpt):
    path, trained = lightbert_ckpt
    classifier = load(path)
    assert classifier.source == "lightbert"
    assert classifier.labels == ["neg", "pos"] and classifier.task == "single_label"
    expected = reference_logits(trained.model, trained.tokenizer)
    assert torch.allclose(classifier.logits(TEXTS), expected, atol=1e-5)
    assert not classifier.model.training


# -- 2. Hugging Face directories -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_bert):
    directory = tmp_path_factory.mktemp("hf") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3,
                                                               id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(directory))
    return directory, model


def test_huggingface_directory_loads_with_its_labels(hf_dir):
    directory, model = hf_dir
    classifier = load(directory)
    assert classifier.source == "huggingface" and classifier.labels == ["a", "b", "c"]
    expected = reference_logits(model, AutoTokenizer.from_pretrained(str(directory)))
    assert torch.allclose(classifier.logits(TEXTS), expected, atol=1e-5)


def test_legacy_pytorch_model_bin_loads(hf_dir, tmp_path):
    directory, model = hf_dir
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (legacy / name).write_bytes((directory / name).read_bytes())
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    classifier = load(legacy)
    assert torch.allclose(classifier.logits(TEXTS), load(directory).logits(TEXTS), atol=1e-6)


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
    with pytest.raises(LightbertError):
        load(evil)
    assert not sentinel.exists()


def test_directory_asking_for_remote_code_is_refused(hf_dir, tmp_path):
    directory, _ = hf_dir
    remote = tmp_path / "remote"
    remote.mkdir()
    for path in directory.iterdir():
        (remote / path.name).write_bytes(path.read_bytes())
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.Evil"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(LightbertError, match="remote code"):
        load(remote)


# -- 3. Lightning checkpoints made with the common recipe ----------------------------------------------------------


class RecipeModule(pl.LightningModule):
    """How users write it: an HF classifier under some attribute, AdamW, Trainer + ModelCheckpoint."""

    def __init__(self, model_dir: str, attribute: str = "model", num_labels: int = 3, hparams: bool = True, extra: bool = False):
        super().__init__()
        if hparams:
            self.save_hyperparameters()
        self.attribute = attribute
        setattr(self, attribute, AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels))
        if extra:
            self.projection = nn.Linear(4, 4)

    @property
    def classifier(self):
        return getattr(self, self.attribute)

    def training_step(self, batch, batch_idx):
        return self.classifier(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def train_recipe(base, tmp_path, **kwargs):
    pl.seed_everything(0, verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    rows = sentiment_rows(12)
    encoded = tokenizer([t for t, _ in rows], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    labels = torch.tensor([int(l) for _, l in rows])
    data = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": labels[i]} for i in range(12)]
    module = RecipeModule(str(base), **kwargs)
    trainer = quiet_trainer(max_steps=3, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=str(tmp_path), filename="recipe")])
    trainer.fit(module, DataLoader(data, batch_size=4))
    return tmp_path / "recipe.ckpt", module, tokenizer


@pytest.mark.parametrize("attribute", ["model", "bert", "net"])
@pytest.mark.parametrize("hparams", [True, False])
def test_recipe_checkpoint_loads_under_any_attribute_with_base(attribute, hparams, tiny_bert, tmp_path):
    path, module, tokenizer = train_recipe(tiny_bert, tmp_path, attribute=attribute, hparams=hparams)
    classifier = load(path, base=tiny_bert)
    assert classifier.source == "lightning" and classifier.info["prefix"] == f"{attribute}."
    assert classifier.model.config.num_labels == 3  # read from the classifier weights
    assert torch.allclose(classifier.logits(TEXTS), reference_logits(module.classifier, tokenizer), atol=1e-5)


def test_recipe_checkpoint_finds_its_base_through_a_hyperparameter(tiny_bert, tmp_path):
    path, module, tokenizer = train_recipe(tiny_bert, tmp_path, hparams=True)
    classifier = load(path)  # hyper_parameters["model_dir"] names an existing local directory
    assert classifier.info["base"] == str(tiny_bert)
    assert torch.allclose(classifier.logits(TEXTS), reference_logits(module.classifier, tokenizer), atol=1e-5)


def test_recipe_checkpoint_without_base_or_hyperparameters_asks_for_base(tiny_bert, tmp_path):
    path, _, _ = train_recipe(tiny_bert, tmp_path, hparams=False)
    with pytest.raises(LightbertError, match="pass --base DIR"):
        load(path)


def test_recipe_checkpoint_with_other_weights_lists_them(tiny_bert, tmp_path):
    path, _, _ = train_recipe(tiny_bert, tmp_path, extra=True)
    with pytest.raises(LightbertError, match="unexpected 2: projection.bias, projection.weight"):
        load(path, base=tiny_bert)


def test_recipe_checkpoint_with_a_base_of_another_architecture_is_refused(tiny_bert, tiny_distilbert, tmp_path):
    path, _, _ = train_recipe(tiny_bert, tmp_path)
    with pytest.raises(LightbertError, match="distilbert"):
        load(path, base=tiny_distilbert)


def test_old_position_ids_buffers_are_tolerated(tiny_bert, tmp_path):
    path, module, tokenizer = train_recipe(tiny_bert, tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["model.bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    classifier = load(tmp_path / "old.ckpt", base=tiny_bert)
    assert torch.allclose(classifier.logits(TEXTS), reference_logits(module.classifier, tokenizer), atol=1e-5)


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_recipe_checkpoints_of_other_architectures_load(arch, request, tmp_path):
    base = request.getfixturevalue(f"tiny_{arch}")
    path, module, tokenizer = train_recipe(base, tmp_path, attribute="encoder", num_labels=2)
    classifier = load(path, base=base)
    assert torch.allclose(classifier.logits(TEXTS), reference_logits(module.classifier, tokenizer), atol=1e-5)


def test_missing_and_url_paths_are_refused(tmp_path):
    with pytest.raises(LightbertError, match="not found"):
        load(tmp_path / "nothing.ckpt")
    with pytest.raises(LightbertError, match="not URLs"):
        load("https://example.com/x.ckpt")
    with pytest.raises(LightbertError, match="no config.json"):
        load(tmp_path)


def test_bfloat16_hf_directory_loads_in_float32(tmp_path):
    directory = make_base_model(tmp_path / "bf16", dtype="bfloat16")
    model = AutoModelForSequenceClassification.from_pretrained(str(directory), num_labels=2, dtype=torch.bfloat16)
    model.save_pretrained(str(directory))
    classifier = load(directory)
    assert {p.dtype for p in classifier.model.parameters()} == {torch.float32}
