"""``lightbert inspect``: what a checkpoint or model directory is and holds, without building a model from it.

The path is identified and checked by ``lightbert.sources.identify``, as every other command does: checkpoints are
read with ``torch.load(weights_only=True)``, directories' weight files are validated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lightbert.checkpoint import epochs_completed
from lightbert.hf import (
    SAMPLE_TEXTS,
    config_from_dict,
    head_outputs,
    labels_of,
    load_tokenizer,
    tokenizer_files_in,
    unknown_token_warning,
    weight_shapes,
)
from lightbert.safety import WEIGHT_FILES
from lightbert.sources import KIND_NAMES, ModelSource, identify


def _guess_architecture(keys: list[str]) -> str | None:
    for model_type in ("distilbert", "roberta", "xlm-roberta", "deberta", "electra", "albert", "bert"):
        if any(re.search(rf"(^|\.){model_type.replace('-', '_')}\.", k) for k in keys):
            return model_type
    return None


def inspect_model(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """A JSON-ready description of a lightbert checkpoint, a Hugging Face directory or a recipe checkpoint."""
    source = identify(path, trust_checkpoint=trust_checkpoint)
    info: dict[str, Any] = {"path": str(source.path), "kind": source.kind, "resumable": source.resumable}
    if source.kind == "huggingface":
        return info | _describe_directory(source)
    checkpoint = source.checkpoint or {}
    info |= {
        "epoch": checkpoint.get("epoch"),
        "epochs_completed": epochs_completed(checkpoint),
        "global_step": checkpoint.get("global_step"),
        "optimizer_state": source.has_optimizer_state,
    }
    if source.kind == "lightbert":
        return info | _describe_lightbert(source)
    return info | _describe_recipe(source)


def _head_details(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], where: str) -> dict[str, Any]:
    """The head's real output count (from the weights), and warnings: no head, labels that disagree with it, a
    tokenizer that makes everyday text unknown tokens is added by the callers that have one."""
    outputs = head_outputs(config_from_dict(config, where), shapes)
    named = len(labels_of(config))
    warnings = []
    if outputs is None:
        warnings.append(
            "no classification head: a base model to fine-tune (lightbert fit --model.base DIR);"
            " predict, evaluate, serve and export refuse it"
        )
    elif named and named != outputs:
        warnings.append(f"config.json's id2label names {named} labels, the head has {outputs} outputs")
    return {"num_labels": outputs, "head": outputs is not None, "warnings": warnings}


def _describe_directory(source: ModelSource) -> dict[str, Any]:
    config = source.config
    labels = labels_of(config)
    head = _head_details(config, weight_shapes(source.path), f"{source.path / 'config.json'}")
    if tokenizer_files_in(source.path):
        warning = unknown_token_warning(load_tokenizer(source.path), SAMPLE_TEXTS, "an English sample")
        head["warnings"] += [warning.removeprefix("warning: ")] if warning else []
    return {
        "architecture": config.get("model_type"),
        "architectures": config.get("architectures"),
        **head,
        "labels": labels,
        "problem_type": config.get("problem_type"),
        "weights": [n for n in WEIGHT_FILES if (source.path / n).is_file()],
        "tokenizer_files": tokenizer_files_in(source.path),
        "versions": {"transformers": config.get("transformers_version")},
    }


def _describe_lightbert(source: ModelSource) -> dict[str, Any]:
    section, config = source.section, source.config
    state_dict = (source.checkpoint or {}).get("state_dict") or {}
    shapes = {k[len("model.") :]: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    return {
        "format_version": section.get("format_version"),
        "architecture": config.get("model_type"),
        **_head_details(config, shapes, f"{source.path}'s model config"),
        "labels": section.get("labels"),
        "task": section.get("task"),
        "problem_type": config.get("problem_type"),
        "data": section.get("data"),
        "metrics": section.get("metrics"),
        "training_config": section.get("training_config"),
        "versions": section.get("versions"),
    }


def _describe_recipe(source: ModelSource) -> dict[str, Any]:
    checkpoint = source.checkpoint or {}
    state_dict = checkpoint["state_dict"]
    keys = [k for k, v in state_dict.items() if hasattr(v, "shape")]
    head = next((k for k in keys if k.endswith(("classifier.weight", "classifier.out_proj.weight"))), None)
    hparams = checkpoint.get("hyper_parameters") or {}
    plain = (str, int, float, bool, type(None), list, dict)
    return {
        "architecture": _guess_architecture(keys),
        "num_labels": int(state_dict[head].shape[0]) if head else None,
        "labels": None,
        "weights": len(keys),
        "hyper_parameters": {k: v for k, v in hparams.items() if isinstance(v, plain)},
        "versions": {"lightning": checkpoint.get("pytorch-lightning_version")},
        "note": "no config or tokenizer inside: load it with --base DIR (an HF directory of the same architecture)",
    }


def format_inspection(info: dict[str, Any]) -> str:
    """Human-readable lines for ``lightbert inspect``."""
    lines = [f"{info['path']}: {KIND_NAMES[info['kind']]}"]
    lines.append(f"  architecture: {info.get('architecture') or 'unknown'}")
    labels = info.get("labels")
    if info.get("head", True):
        shown = f" ({', '.join(map(str, labels))})" if labels else ""
        lines.append(f"  labels: {info.get('num_labels')}{shown}")
    if info.get("task") or info.get("problem_type"):
        problem = f" ({info['problem_type']})" if info.get("problem_type") else ""
        lines.append(f"  task: {info.get('task') or ''}{problem}".rstrip())
    if info["kind"] == "huggingface":
        weights, tokenizer = ", ".join(info["weights"]) or "none", ", ".join(info["tokenizer_files"]) or "none"
        lines.append(f"  weights: {weights}; tokenizer: {tokenizer}")
        lines.append("  not resumable (no optimizer state); fine-tune further with lightbert fit --model.base DIR")
    else:
        lines.append(f"  epochs completed {info.get('epochs_completed')}, global step {info.get('global_step')}")
        if info["resumable"]:
            lines.append("  optimizer state: present, resumable with lightbert fit --ckpt_path")
        elif info.get("optimizer_state"):
            lines.append("  optimizer state: present (a recipe checkpoint's; lightbert fit cannot resume it)")
        else:
            lines.append("  optimizer state: absent, not resumable")
    if info.get("data"):
        lines.append("  data: " + ", ".join(f"{k}={v}" for k, v in info["data"].items()))
    if info.get("metrics"):
        lines.append("  metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(info["metrics"].items())))
    if info.get("hyper_parameters"):
        lines.append("  hyper-parameters: " + json.dumps(info["hyper_parameters"], default=str)[:500])
    versions = {k: v for k, v in (info.get("versions") or {}).items() if v}
    if versions:
        lines.append("  written with: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if info.get("note"):
        lines.append(f"  note: {info['note']}")
    lines += [f"  warning: {warning}" for warning in info.get("warnings") or []]
    if info.get("training_config"):
        lines.append("  training config:")
        lines += ["    " + line for line in info["training_config"].rstrip().splitlines()]
    return "\n".join(lines)
