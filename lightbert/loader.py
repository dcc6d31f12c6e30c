"""One loader for every fine-tuned classifier a user is likely to hold.

``load(path, base=None)`` tells apart, by itself:

1. a lightbert checkpoint (``.ckpt`` with a ``"lightbert"`` section): needs nothing else;
2. a Hugging Face model directory (``config.json`` + ``model.safetensors`` or a legacy ``pytorch_model.bin``);
3. a Lightning checkpoint made with the common recipe (a ``LightningModule`` holding an
   ``AutoModelForSequenceClassification`` under any attribute name): config and tokenizer come from ``base`` or
   from a hyper-parameter naming a local model directory; the weight names are matched by finding the one prefix
   that maps them onto the architecture, and the number of labels is read from the classifier weights.

Nothing is unpickled beyond what ``torch.load(weights_only=True)`` allows, no remote code is trusted and
nothing is downloaded.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lightbert.checkpoint import (
    SECTION,
    lightbert_section,
    read_checkpoint,
    tokenizer_from_files,
    unsafe_pickle_error,
)
from lightbert.errors import LightbertError
from lightbert.hf import check_model_dir, effective_max_length, label_dependent_keys, load_tokenizer
from lightbert.predict import Classifier
from lightbert.safety import check_model_files

# Buffers that transformers stopped (or started) saving across versions; their absence or presence is harmless.
NON_PERSISTENT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def load(path: str | Path, base: str | Path | None = None, trust_checkpoint: bool = False) -> Classifier:
    """A ready classifier (eval mode, float32, on the CPU: ``.to(device)`` moves it) from a lightbert checkpoint, a
    Hugging Face model directory, or a Lightning checkpoint made with the common recipe (``base``: an HF directory of
    the same architecture). ``trust_checkpoint`` allows full unpickling, for checkpoints the user made themselves."""
    text = str(path)
    if "://" in text:
        raise LightbertError(f"model paths must be local, not URLs: {text}", "download the model yourself and check where it comes from")
    path = Path(path)
    if path.is_dir():
        return load_huggingface(path)
    if not path.exists():
        raise LightbertError(f"model not found: {path}", "give a .ckpt file or a Hugging Face model directory")
    checkpoint = read_checkpoint(path, trust=trust_checkpoint)
    if SECTION in checkpoint:
        return load_lightbert(path, checkpoint)
    return load_lightning(path, checkpoint, base)


# -- 1. lightbert checkpoints ----------------------------------------------------------------------------------------


def load_lightbert(path: Path, checkpoint: dict[str, Any] | None = None) -> Classifier:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
    section = lightbert_section(checkpoint, path)
    config_data = dict(section["hf_config"])
    config = AutoConfig.for_model(config_data.pop("model_type"), **config_data)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    weights = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    _load_strict(model, weights, path)
    tokenizer = tokenizer_from_files(section["tokenizer_files"])
    data = section.get("data") or {}
    max_length = int(data.get("max_length") or effective_max_length(512, tokenizer, config))
    return Classifier(model, tokenizer, max_length=max_length, source="lightbert", path=str(path),
                      info={"section": section, "epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")})


# -- 2. Hugging Face directories -------------------------------------------------------------------------------------


def load_huggingface(path: Path) -> Classifier:
    from transformers import AutoModelForSequenceClassification

    check_model_dir(path, what="model", weights=True)
    if not any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json")):
        raise LightbertError(f"{path} has no tokenizer files", "save the tokenizer into the same directory with tokenizer.save_pretrained")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), dtype=torch.float32, local_files_only=True, trust_remote_code=False
        )
    except pickle.UnpicklingError as err:
        raise unsafe_pickle_error(path / "pytorch_model.bin", err) from None
    except (OSError, ValueError, RuntimeError) as err:
        raise LightbertError(f"cannot load the model in {path}: {str(err).splitlines()[0][:200]}", "check that its weight files are complete") from None
    tokenizer = load_tokenizer(path)
    model.eval()
    return Classifier(model, tokenizer, max_length=effective_max_length(512, tokenizer, model.config),
                      source="huggingface", path=str(path), info={})


# -- 3. foreign Lightning checkpoints --------------------------------------------------------------------------------


def local_model_dirs(value: Any) -> list[Path]:
    """Existing local HF model directories named anywhere in (nested) hyper-parameters."""
    found: list[Path] = []
    if isinstance(value, str) and value and len(value) < 4096 and "://" not in value:
        candidate = Path(value)
        try:
            if candidate.is_dir() and (candidate / "config.json").is_file():
                found.append(candidate)
        except OSError:
            pass
    elif isinstance(value, dict):
        for item in value.values():
            found += local_model_dirs(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += local_model_dirs(item)
    return found


def _is_buffer_key(key: str) -> bool:
    return key.endswith(NON_PERSISTENT_BUFFERS)


def match_prefix(checkpoint_keys: list[str], model_keys: list[str]) -> str:
    """The one prefix P with ``P + model_key`` in the checkpoint for (nearly) every model key, e.g. ``"model."``."""
    wanted = [k for k in model_keys if not _is_buffer_key(k)]
    votes: Counter[str] = Counter()
    model_key_set = set(wanted)
    for key in checkpoint_keys:
        for model_key in model_key_set:
            if key.endswith(model_key) and (len(key) == len(model_key) or key[-len(model_key) - 1] == "."):
                votes[key[: len(key) - len(model_key)]] += 1
    if not votes:
        return ""
    best = max(votes.values())
    prefixes = [p for p, v in votes.items() if v == best]
    return min(prefixes, key=len)


def load_lightning(path: Path, checkpoint: dict[str, Any], base: str | Path | None) -> Classifier:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict) or not state_dict:
        raise LightbertError(f"{path} holds no model weights (no state_dict)", "give a checkpoint saved by Lightning's Trainer or ModelCheckpoint")
    if base is None:
        candidates = local_model_dirs(checkpoint.get("hyper_parameters"))
        if not candidates:
            raise LightbertError(
                f"{path} is a Lightning checkpoint without a model config or tokenizer",
                "pass --base DIR, a Hugging Face model directory of the same architecture",
            )
        base = candidates[0]
    base = check_model_dir(base)
    base_config = check_model_files(base, weights=False)
    config = AutoConfig.from_pretrained(str(base), local_files_only=True, trust_remote_code=False)
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}

    # The number of labels, from the shape of the classifier weights.
    head_keys = label_dependent_keys(config)
    with torch.device("meta"):
        probe = AutoModelForSequenceClassification.from_config(config)
    prefix = match_prefix(list(tensors), list(probe.state_dict()))
    head = next((prefix + k for k in head_keys if prefix + k in tensors), None)
    if head is None:
        raise LightbertError(
            f"{path} has no {config.model_type} classification head under any prefix (looked for {', '.join(head_keys)})",
            f"check that --base ({base}) has the architecture the checkpoint was trained with",
        )
    num_labels = int(tensors[head].shape[0])
    if num_labels != config.num_labels:
        names = [f"LABEL_{i}" for i in range(num_labels)]
        config.num_labels = num_labels
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
    if config.problem_type is None and num_labels == 1:
        config.problem_type = "regression"
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    outside = sorted(k for k in tensors if not k.startswith(prefix))
    _load_strict(model, weights, path, extra_unexpected=outside, base=base)
    tokenizer = load_tokenizer(base)
    hparams = checkpoint.get("hyper_parameters") or {}
    return Classifier(model, tokenizer, max_length=effective_max_length(512, tokenizer, config), source="lightning",
                      path=str(path), info={"prefix": prefix, "base": str(base), "epoch": checkpoint.get("epoch"),
                                            "global_step": checkpoint.get("global_step"), "hyper_parameters": hparams,
                                            "base_model_type": base_config.get("model_type")})


def _load_strict(model: Any, weights: dict[str, torch.Tensor], path: Path, extra_unexpected: list[str] = (), base: Path | None = None) -> None:
    """Load all weights or fail listing what is missing or unexpected (only known buffers may differ)."""
    hint = f"check that --base ({base}) has the architecture the checkpoint was trained with" if base else "the file is corrupt; use another checkpoint"
    expected_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatched = sorted(k for k, v in weights.items() if k in expected_shapes and tuple(v.shape) != expected_shapes[k])
    if mismatched:
        details = ", ".join(f"{k} {tuple(weights[k].shape)} vs {expected_shapes[k]}" for k in mismatched[:5])
        raise LightbertError(f"{path} has weights of the wrong shape: {details}", hint)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not _is_buffer_key(k)]
    unexpected = [k for k in unexpected if not _is_buffer_key(k)] + list(extra_unexpected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(sorted(missing)[:6])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(sorted(unexpected)[:6])}")
        raise LightbertError(f"{path} does not match the model: {'; '.join(parts)}", hint)
    model.eval()
