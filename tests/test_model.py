"""Specification of lightbert.model: dropout, dtype, optimizer, schedule, metrics, architectures."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_base_model, quiet_trainer, sentiment_rows, write_csv, write_jsonl
from torch import nn
from transformers import AutoModel

from lightbert.datamodule import ClassificationDataModule
from lightbert.model import SequenceClassifier, linear_warmup_decay


def fit(base, train, val, max_epochs=1, model_kwargs=None, callbacks=(), precision="32-true", **data_kwargs):
    pl.seed_everything(0, verbose=False)
    dm = ClassificationDataModule(
        train=str(train), validation=str(val), tokenizer=str(base), batch_size=4, **data_kwargs
    )
    model = SequenceClassifier(base=str(base), learning_rate=1e-3, **(model_kwargs or {}))
    trainer = quiet_trainer(max_epochs=max_epochs, callbacks=list(callbacks), precision=precision)
    trainer.fit(model, dm)
    return model, trainer


def test_dropout_is_on_in_training_and_off_in_validation(tiny_bert, sentiment_files):
    seen = {"training_step": set(), "validation_step": set()}

    class Probe(SequenceClassifier):
        def training_step(self, batch, batch_idx):
            seen["training_step"].update(m.training for m in self.model.modules() if isinstance(m, nn.Dropout))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            seen["validation_step"].update(m.training for m in self.model.modules() if isinstance(m, nn.Dropout))
            return super().validation_step(batch, batch_idx)

    pl.seed_everything(0, verbose=False)
    train, val = sentiment_files
    dm = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert), batch_size=8)
    trainer = quiet_trainer(max_epochs=2, num_sanity_val_steps=2, val_check_interval=2)
    trainer.fit(Probe(base=str(tiny_bert)), dm)
    assert seen["training_step"] == {True}  # every dropout module, every step, also after mid-epoch validation
    assert seen["validation_step"] == {False}


def test_weights_are_float32_even_if_the_base_is_stored_in_bfloat16(tmp_path, sentiment_files):
    base = make_base_model(tmp_path / "bf16", "bert", dtype="bfloat16")
    model, _ = fit(base, *sentiment_files, max_epochs=1)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_optimizer_is_torch_adamw_without_decay_on_biases_and_layernorm_weights(tiny_bert, sentiment_files):
    model, trainer = fit(tiny_bert, *sentiment_files, model_kwargs={"weight_decay": 0.1})
    assert type(trainer.optimizers[0]) is torch.optim.AdamW  # the recipe's `transformers.AdamW` is gone in v5
    decayed, plain = trainer.optimizers[0].param_groups
    names = {id(p): n for n, p in model.model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decayed["params"])
    assert {names[id(p)] for p in plain["params"]} >= {"bert.embeddings.LayerNorm.weight", "classifier.bias"}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_learning_rate_warms_up_then_decays_per_optimizer_step(tiny_bert, sentiment_files):
    lrs = []

    class LR(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    _, trainer = fit(tiny_bert, *sentiment_files, max_epochs=2, model_kwargs={"warmup_steps": 4}, callbacks=[LR()])
    assert isinstance(trainer.optimizers[0], torch.optim.AdamW)
    assert len(lrs) == 20  # 40 rows / batch 4, two epochs
    assert lrs[:5] == sorted(lrs[:5]) and lrs[4] == pytest.approx(1e-3)
    assert lrs[4:] == sorted(lrs[4:], reverse=True) and lrs[-1] < 1e-4


def test_schedule_factor_is_linear():
    factor = linear_warmup_decay(warmup_steps=3, total_steps=10)
    assert [round(factor(s), 4) for s in range(11)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        0.8571,
        0.7143,
        0.5714,
        0.4286,
        0.2857,
        0.1429,
        0.0,
    ]


def test_validation_accuracy_and_loss_are_those_of_the_model_on_every_validation_row(tiny_bert, sentiment_files):
    model, trainer = fit(tiny_bert, *sentiment_files, max_epochs=1)
    metrics = trainer.callback_metrics
    assert {"val_loss", "val_accuracy", "val_f1_macro"} <= set(metrics)
    texts, labels = zip(*sentiment_rows(8, seed=2), strict=True)
    model.eval()
    with torch.no_grad():
        inputs = model.tokenizer(list(texts), padding=True, return_tensors="pt")
        logits = model.model(**inputs).logits
    targets = torch.tensor([int(label) for label in labels])
    accuracy = (logits.argmax(-1) == targets).float().mean()
    loss = torch.nn.functional.cross_entropy(logits, targets)
    assert float(metrics["val_accuracy"]) == pytest.approx(float(accuracy), abs=1e-6)
    assert float(metrics["val_loss"]) == pytest.approx(float(loss), abs=1e-5)


def test_bf16_mixed_training_keeps_fp32_weights_and_follows_the_fp32_run(tiny_bert, sentiment_files):
    fp32, fp32_trainer = fit(tiny_bert, *sentiment_files, max_epochs=2)
    bf16, bf16_trainer = fit(tiny_bert, *sentiment_files, max_epochs=2, precision="bf16-mixed")
    assert {p.dtype for p in bf16.parameters()} == {torch.float32}
    pretrained = AutoModel.from_pretrained(str(tiny_bert)).embeddings.word_embeddings.weight
    assert (bf16.model.bert.embeddings.word_embeddings.weight - pretrained).abs().max() > 1e-3  # it trained
    loss, expected_loss = (
        float(bf16_trainer.callback_metrics["train_loss"]),
        float(fp32_trainer.callback_metrics["train_loss"]),
    )
    assert abs(loss - expected_loss) < 0.01
    for (name, p), q in zip(fp32.named_parameters(), bf16.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=0.01, rtol=0, msg=name)


def test_multi_label_logs_micro_and_macro_f1(tmp_path, tiny_bert):
    records = [
        {"text": "goal match vote", "labels": ["sports", "politics"]},
        {"text": "atom lab", "labels": ["science"]},
        {"text": "team goal", "labels": ["sports"]},
        {"text": "law senate cell", "labels": ["politics", "science"]},
    ] * 4
    path = write_jsonl(tmp_path / "m.jsonl", records)
    model, trainer = fit(tiny_bert, path, path, max_epochs=1)
    assert model.task == "multi_label" and model.model.config.problem_type == "multi_label_classification"
    assert model.model.config.id2label == {0: "politics", 1: "science", 2: "sports"}
    assert {"val_loss", "val_f1_micro", "val_f1_macro"} <= set(trainer.callback_metrics)


def test_regression_logs_mse_pearson_spearman(tmp_path, tiny_bert):
    rows = [(t, f"{float(label) * 4 + 0.5:.2f}") for t, label in sentiment_rows(24)]
    path = write_csv(tmp_path / "r.csv", ["text", "score"], rows)
    model, trainer = fit(tiny_bert, path, path, max_epochs=1)
    assert model.task == "regression" and model.model.config.num_labels == 1
    assert {"val_loss", "val_mse", "val_pearson", "val_spearman"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_architectures_without_token_type_ids_train(arch, request, tmp_path):
    base = request.getfixturevalue(f"tiny_{arch}")
    path = write_csv(
        tmp_path / "p.csv",
        ["sentence1", "sentence2", "label"],
        [(t, "the film", label) for t, label in sentiment_rows(16)],
    )
    model, trainer = fit(base, path, path, max_epochs=1)
    assert trainer.global_step == 4 and model.model.config.model_type == arch


def test_labels_reach_the_hf_config(tiny_bert, tmp_path):
    path = write_csv(
        tmp_path / "a.csv",
        ["text", "label"],
        [(t, "World" if label == "1" else "Sports") for t, label in sentiment_rows(8)],
    )
    model, _ = fit(tiny_bert, path, path)
    config = model.model.config
    assert config.id2label == {0: "Sports", 1: "World"} and config.label2id == {"Sports": 0, "World": 1}
    assert config.problem_type == "single_label_classification"


def test_training_on_cpu_uses_every_fast_path(tiny_bert, sentiment_files):
    from lightbert.fastpath import ATTENTION_NAME, CpuDropout, GeluThenLinear, ResidentGradientEmbedding

    model, _ = fit(tiny_bert, *sentiment_files)
    hf = model.model
    assert all(type(m) is CpuDropout for m in hf.modules() if isinstance(m, nn.Dropout))
    assert hf.config._attn_implementation == ATTENTION_NAME
    assert sum(isinstance(m, GeluThenLinear) for m in hf.modules()) == hf.config.num_hidden_layers
    embedding = hf.get_input_embeddings()
    assert isinstance(embedding, ResidentGradientEmbedding) and embedding.resident_grad is not None
    ids = model.tokenizer(["a good film"], return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 1
    assert hf.base_model(input_ids=ids).last_hidden_state.shape[1] == 1  # last layer: first position only
