"""Shared fixtures: tiny random BERT/DistilBERT/RoBERTa model directories and small data files, built in the test
session (no download, no network), and paths to the real data in ../shared/data."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

POSITIVE = ["good", "great", "fine", "lovely", "superb", "happy", "bright", "warm"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dull", "grim", "cold", "weak"]
NEUTRAL = ["the", "a", "film", "movie", "was", "is", "very", "plot", "actor", "story", "and", "but", "quite", "rather"]
TOPICS = {"sports": ["goal", "match", "team"], "politics": ["vote", "law", "senate"], "science": ["atom", "cell", "lab"]}
VOCAB_WORDS = sorted(set(POSITIVE + NEGATIVE + NEUTRAL + [w for ws in TOPICS.values() for w in ws]))


def make_tokenizer(directory: Path):
    """A small WordPiece tokenizer (BERT-style) written to ``directory``."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    (directory / "vocab.txt").write_text("\n".join(specials + VOCAB_WORDS + letters + list(".,!?")) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def make_base_model(directory: Path, arch: str = "bert", dtype: str | None = None) -> Path:
    """A tiny random model without a classification head (like a pretrained encoder), plus its tokenizer."""
    import torch
    from transformers import AutoModel, BertConfig, DistilBertConfig, RobertaConfig

    tokenizer = make_tokenizer(directory)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    if arch == "bert":
        config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, max_position_embeddings=64)
    elif arch == "distilbert":
        config = DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=37,
                                  max_position_embeddings=64)
    elif arch == "roberta":
        config = RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=66, pad_token_id=0, type_vocab_size=1)
    else:
        raise ValueError(arch)
    model = AutoModel.from_config(config)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("tiny-distilbert"), "distilbert")


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Learnable toy sentiment: a positive or negative word among neutral ones; varied lengths."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(NEUTRAL, k=rng.randint(2, 12)) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), str(label)))
    return rows


def write_csv(path: Path, header: list[str] | None, rows: list[tuple]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def sentiment_files(tmp_path) -> tuple[Path, Path]:
    """A training and a validation CSV of toy sentiment (header text,label)."""
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(40, seed=1))
    val = write_csv(tmp_path / "val.csv", ["text", "label"], sentiment_rows(8, seed=2))
    return train, val


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "sst2" / "train.tsv").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def quiet_trainer(**kwargs):
    """A Trainer for tests: CPU, no logger files, no progress bar, deterministic."""
    import lightning.pytorch as pl

    options = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, deterministic=True, num_sanity_val_steps=0)
    options.update(kwargs)
    return pl.Trainer(**options)
