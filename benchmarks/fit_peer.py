"""One fine-tuning peer of benchmarks/fit.py, run in a process of its own (so peak RSS is its own):

    python benchmarks/fit_peer.py PEER ROWS VAL_ROWS OUT.json ACCELERATOR

Writes ``{"seconds", "samples_per_s", "accuracy"}`` to OUT.json; only ``trainer.fit``/``trainer.train`` is timed.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sst2(rows: int, val_rows: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The first ``rows`` rows of the shared SST-2 training file, and the next ``val_rows`` for validation."""
    with open(DATA / "sst2" / "train.tsv", encoding="utf-8") as f:
        data = [(r[0], int(r[1])) for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    return data[:rows], data[rows : rows + val_rows]


def accuracy(model: Any, tokenizer: Any, val: list[tuple[str, int]]) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(val), 64):
            chunk = val[start : start + 64]
            texts = [t for t, _ in chunk]
            inputs = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            predicted = model(**inputs.to(device)).logits.argmax(-1).tolist()
            correct += sum(p == y for p, (_, y) in zip(predicted, chunk, strict=True))
    return correct / len(val)


def trainer_arguments(output_dir: str, **options: Any) -> Any:
    """The HF Trainer's arguments at its best CPU settings (``options`` override): batch 32, AdamW lr 5e-5, 10%
    warm-up then linear decay, length-grouped batches, one epoch, nothing saved or reported."""
    from transformers import TrainingArguments

    settings = dict(
        output_dir=output_dir,
        per_device_train_batch_size=32,
        learning_rate=5e-5,
        num_train_epochs=1,
        train_sampling_strategy="group_by_length",
        save_strategy="no",
        report_to=[],
        logging_steps=50,
        seed=0,
        warmup_steps=0.1,
        weight_decay=0.01,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**(settings | options))


def lightning_trainer(**options: Any) -> Any:
    """A Lightning Trainer as the benchmarks time lightbert: no logger, checkpoints, progress bar or validation."""
    import lightning.pytorch as pl

    settings = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**(settings | options))


def run_trainer(peer: str, base: str, train: list[tuple[str, int]], out: str, accelerator: str) -> tuple[float, Any]:
    from transformers import DataCollatorWithPadding, Trainer

    tokenizer = AutoTokenizer.from_pretrained(base)
    pad128, grouped = peer == "trainer-pad128", peer in ("trainer-best", "trainer-best-bf16")
    texts = [t for t, _ in train]
    enc = tokenizer(texts, truncation=True, max_length=128, padding="max_length" if pad128 else False)
    dataset = [
        {
            "input_ids": enc["input_ids"][i],
            "attention_mask": enc["attention_mask"][i],
            "token_type_ids": enc["token_type_ids"][i],
            "labels": train[i][1],
        }
        for i in range(len(train))
    ]
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, dtype=torch.float32)
    args = trainer_arguments(
        out + ".trainer",
        train_sampling_strategy="group_by_length" if grouped else "random",
        use_cpu=accelerator == "cpu",
        bf16=peer.endswith("-bf16"),
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, model


def run_lightning_recipe(base: str, train: list[tuple[str, int]], accelerator: str) -> tuple[float, Any]:
    import lightning.pytorch as pl

    tokenizer = AutoTokenizer.from_pretrained(base)
    texts = [t for t, _ in train]
    enc = tokenizer(texts, truncation=True, max_length=128, padding="max_length", return_tensors="pt")
    labels = torch.tensor([y for _, y in train])
    data = torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], labels)

    class Recipe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, dtype=torch.float32)

        def on_train_start(self) -> None:
            self.model.train()  # the recipe's fix for Lightning >= 2.2 keeping eval mode

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            ids, mask, types, labels = batch
            loss = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=5e-5, weight_decay=0.01)

    module = Recipe()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start, module.model


def run_lightbert(peer: str, train: list[tuple[str, int]], accelerator: str) -> tuple[float, Any, Any]:

    from lightbert.datamodule import ClassificationDataModule
    from lightbert.model import SequenceClassifier

    path = pathlib.Path(tempfile.mkdtemp()) / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in train), encoding="utf-8")
    data = ClassificationDataModule(train=str(path), validation=str(path), batch_size=32, max_length=128)
    module = SequenceClassifier(learning_rate=5e-5)
    trainer = lightning_trainer(
        max_epochs=1,
        accelerator=accelerator,
        devices=1,
        precision="bf16-mixed" if peer.endswith("-bf16") else "32-true",
    )
    data.setup("fit")
    module.preflight(data)
    module.configure_classifier()  # the model is built before timing, as the other peers'
    start = time.perf_counter()
    trainer.fit(module, data)
    return time.perf_counter() - start, module.model, module.tokenizer


def main() -> None:
    from lightbert.bundled import default_base_model

    peer, rows, val_rows, out, accelerator = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    base = default_base_model()
    train, val = sst2(rows, val_rows)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if peer.startswith("trainer"):
        seconds, model = run_trainer(peer, base, train, out, accelerator)
    elif peer == "lightning-recipe":
        seconds, model = run_lightning_recipe(base, train, accelerator)
    else:
        seconds, model, tokenizer = run_lightbert(peer, train, accelerator)
    result = {"seconds": seconds, "samples_per_s": len(train) / seconds, "accuracy": accuracy(model, tokenizer, val)}
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
