"""Hugging Face model directories, configs, tokenizers and classification heads.

Everything loads from local files only (``local_files_only=True``) and ``trust_remote_code`` is always False.
Head planning: a base that is already a fine-tuned classifier keeps its head when the data has the same labels
(rows reordered if their order differs); other labels need ``new_head``, which re-initialises the label-dependent
head weights.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightbert.errors import LightbertError, note
from lightbert.safety import check_model_files

PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "spm.model",
)


def check_model_dir(path: str | Path, what: str = "base model", weights: bool = False) -> Path:
    """A local Hugging Face model directory that is safe to load (config.json without remote code; weight files
    that are complete, when ``weights``), or a clear error. Nothing is ever downloaded."""
    path = Path(path)
    if "://" in str(path):
        raise LightbertError(
            f"{what} must be a local directory, not a URL: {path}",
            "download the model yourself and check where it comes from",
        )
    if not path.is_dir():
        raise LightbertError(
            f"{what} directory not found: {path}", "give a local Hugging Face model directory; nothing is downloaded"
        )
    check_model_files(path, weights=weights)
    return path


def tokenizer_files_in(path: Path) -> list[str]:
    """The tokenizer files a directory holds."""
    return [name for name in TOKENIZER_FILES if (path / name).is_file()]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bars or "newly initialized" notices (expected for a new head); errors still show."""
    from transformers.utils import logging as hf_logging

    verbosity, progress_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def load_config(path: str | Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def config_from_dict(data: dict[str, Any]) -> Any:
    """An HF config object from its JSON form (as a lightbert checkpoint stores it)."""
    from transformers import AutoConfig

    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


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


# -- labels and tasks in an HF config --------------------------------------------------------------------------------


def task_of(config: Any) -> str:
    """single_label, multi_label or regression, from an HF config object."""
    if config.problem_type == "multi_label_classification":
        return "multi_label"
    if config.problem_type == "regression" or config.num_labels == 1:
        return "regression"
    return "single_label"


def labels_of(config: Any) -> list[str]:
    """The label names of an HF config (object or JSON dict), in output order."""
    id2label = config.get("id2label") if isinstance(config, dict) else config.id2label
    id2label = id2label or {}
    return [str(id2label[key]) for key in sorted(id2label, key=int)]


THRESHOLDS_KEY = "label_thresholds"  # multi-label: each label's threshold, in the config (lightbert's own field)


def thresholds_of(config: Any, source: str = "the model") -> dict[str, float] | None:
    """A multi-label config's per-label thresholds (``--model.tune_thresholds``), checked; None when it has none."""
    stored = getattr(config, THRESHOLDS_KEY, None)
    if stored is None or task_of(config) != "multi_label":
        return None
    labels = labels_of(config)
    valid = isinstance(stored, dict) and set(stored) == set(labels)
    valid = valid and all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in stored.values())
    if not valid:
        raise LightbertError(
            f"{source} has {THRESHOLDS_KEY} that are not one number in [0, 1] per label",
            f"remove {THRESHOLDS_KEY} from its config.json, or export it again",
        )
    return {name: float(stored[name]) for name in labels}


def label_config(task: str, labels: list[str] | None) -> dict[str, Any]:
    """The HF config fields that describe a classification head."""
    names = labels if task != "regression" else None
    id2label = dict(enumerate(names)) if names else {0: "score"}
    return {
        "num_labels": len(id2label),
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
    return [n[len("LABEL_") :] if n == f"LABEL_{i}" else n for i, n in enumerate(labels_of(config))]


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


# -- starting a classifier from a base --------------------------------------------------------------------------------


@dataclass
class HeadPlan:
    """How a classifier starts from a base: the base's config, its head's labels (None when it has no
    classification head), the labels wanted, and whether the base's head is kept."""

    config: Any
    base_head: list[str] | None
    wanted: list[str]
    keep_head: bool


def plan_head(config: Any, task: str, labels: list[str] | None, new_head: bool, base: str | Path) -> HeadPlan:
    """Check a base's config (``base`` names it in messages) against the task and labels before anything is built.
    Raises if the base is a classifier for other labels and ``new_head`` is not set."""
    base_head = head_labels(config)
    wanted = list(labels or []) if task != "regression" else ["score"]
    same_problem = PROBLEM_TYPES[task] == (config.problem_type or PROBLEM_TYPES[task])
    keep_head = base_head is not None and set(base_head) == set(wanted) and same_problem
    if base_head is not None and not keep_head and not new_head:
        raise LightbertError(
            f"{base} was fine-tuned for {config.problem_type or 'labels'} [{', '.join(base_head)}], "
            f"the data has {task} [{', '.join(wanted)}]",
            "pass --model.new_head true to start a new classification head",
        )
    return HeadPlan(config, base_head, wanted, keep_head)


def head_order(plan: HeadPlan) -> list[int] | None:
    """For a kept head whose labels come in another order: the base's row for each wanted label."""
    if plan.keep_head and plan.base_head != plan.wanted:
        assert plan.base_head is not None
        return [plan.base_head.index(name) for name in plan.wanted]
    return None


def build_classifier(
    plan: HeadPlan,
    task: str,
    labels: list[str] | None,
    weights: Path | dict[str, torch.Tensor],
    load_weights: Callable[[Any, dict[str, torch.Tensor]], None] | None = None,
) -> Any:
    """The HF classifier of ``plan`` in float32, with this task's head: the base's head kept (rows reordered to
    ``labels``) or re-initialised (said on stderr). ``weights`` is the base directory (read by ``from_pretrained``
    from local files only) or the base's weights (loaded by ``load_weights(model, weights)``, without the head's
    label-dependent weights when the head is replaced)."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(plan.config)
    for key, value in label_config(task, labels).items():
        setattr(config, key, value)
    replace_head = plan.base_head is not None and not plan.keep_head
    with quiet_transformers():
        if isinstance(weights, Path):
            model = AutoModelForSequenceClassification.from_pretrained(
                str(weights),
                config=config,
                dtype=torch.float32,
                local_files_only=True,
                trust_remote_code=False,
                ignore_mismatched_sizes=replace_head,
            )
        else:
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
            assert load_weights is not None
            load_weights(model, weights)
    if plan.base_head is not None:
        keys = label_dependent_keys(config)
        parameters = dict(model.named_parameters())
        order = head_order(plan)
        with torch.no_grad():
            if order is not None:
                for key in keys:
                    parameters[key].copy_(parameters[key][torch.tensor(order)])
            elif replace_head:
                for key in keys:
                    model._init_weights(model.get_submodule(key.rsplit(".", 1)[0]))
                note(f"new classification head: re-initialised {', '.join(keys)}")
    return model.train()
