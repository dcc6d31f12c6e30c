"""``lightbert inspect``: what a checkpoint or model directory is and holds, without running anything from it.

Checkpoints are read with ``torch.load(weights_only=True)`` (tensors and plain data only); Hugging Face
directories by reading ``config.json`` and listing files. No model is built.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lightbert.checkpoint import SECTION, read_checkpoint
from lightbert.errors import LightbertError
from lightbert.safety import WEIGHT_FILES, check_model_files

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "sentencepiece.bpe.model", "spm.model")


def _labels_from_config(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]


def _guess_architecture(keys: list[str]) -> str | None:
    for model_type in ("distilbert", "roberta", "xlm-roberta", "deberta", "electra", "albert", "bert"):
        if any(re.search(rf"(^|\.){model_type.replace('-', '_')}\.", k) for k in keys):
            return model_type
    return None


def describe(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """A JSON-ready description of a lightbert checkpoint, a Lightning checkpoint or a Hugging Face directory."""
    text = str(path)
    if "://" in text:
        raise LightbertError(f"paths must be local, not URLs: {text}", "download the file yourself")
    path = Path(path)
    if path.is_dir():
        config = check_model_files(path, weights=False)
        labels = _labels_from_config(config)
        return {
            "path": str(path),
            "kind": "huggingface",
            "architecture": config.get("model_type"),
            "architectures": config.get("architectures"),
            "num_labels": len(labels) or config.get("num_labels"),
            "labels": labels,
            "problem_type": config.get("problem_type"),
            "weights": [n for n in WEIGHT_FILES if (path / n).is_file()],
            "tokenizer_files": [n for n in TOKENIZER_FILES if (path / n).is_file()],
            "resumable": False,
            "versions": {"transformers": config.get("transformers_version")},
        }
    if not path.exists():
        raise LightbertError(f"not found: {path}", "check the path")
    checkpoint = read_checkpoint(path, trust=trust_checkpoint)
    resumable = bool(checkpoint.get("optimizer_states")) and "loops" in checkpoint
    common = {
        "path": str(path),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "optimizer_state": bool(checkpoint.get("optimizer_states")),
        "resumable": resumable,
    }
    section = checkpoint.get(SECTION)
    if isinstance(section, dict) and "hf_config" in section:
        config = section["hf_config"]
        return {
            **common,
            "kind": "lightbert",
            "format_version": section.get("format_version"),
            "architecture": config.get("model_type"),
            "num_labels": config.get("num_labels") or len(_labels_from_config(config)),
            "labels": section.get("labels"),
            "task": section.get("task"),
            "problem_type": config.get("problem_type"),
            "data": section.get("data"),
            "metrics": section.get("metrics"),
            "training_config": section.get("training_config"),
            "versions": section.get("versions"),
        }
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        raise LightbertError(f"{path} is a checkpoint without model weights (no state_dict)", "give a checkpoint saved by Lightning")
    keys = [k for k, v in state_dict.items() if hasattr(v, "shape")]
    head = next((k for k in keys if k.endswith(("classifier.weight", "classifier.out_proj.weight"))), None)
    hparams = checkpoint.get("hyper_parameters") or {}
    return {
        **common,
        "kind": "lightning",
        "architecture": _guess_architecture(keys),
        "num_labels": int(state_dict[head].shape[0]) if head else None,
        "labels": None,
        "weights": len(keys),
        "hyper_parameters": {k: v for k, v in hparams.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))},
        "versions": {"lightning": checkpoint.get("pytorch-lightning_version")},
        "note": "no config or tokenizer inside: load it with --base DIR (an HF directory of the same architecture)",
    }


def format_description(info: dict[str, Any]) -> str:
    """Human-readable lines for ``lightbert inspect``."""
    kinds = {"lightbert": "lightbert checkpoint", "lightning": "Lightning checkpoint (common recipe)", "huggingface": "Hugging Face model directory"}
    lines = [f"{info['path']}: {kinds[info['kind']]}"]
    lines.append(f"  architecture: {info.get('architecture') or 'unknown'}")
    labels = info.get("labels")
    lines.append(f"  labels: {info.get('num_labels')}" + (f" ({', '.join(map(str, labels))})" if labels else ""))
    if info.get("task") or info.get("problem_type"):
        lines.append(f"  task: {info.get('task') or ''} {('(' + info['problem_type'] + ')') if info.get('problem_type') else ''}".rstrip())
    if info["kind"] != "huggingface":
        lines.append(f"  epoch {info.get('epoch')}, global step {info.get('global_step')}")
        lines.append("  optimizer state: " + ("present, resumable with lightbert fit --ckpt_path" if info["resumable"] else "absent, not resumable"))
    else:
        lines.append(f"  weights: {', '.join(info['weights']) or 'none'}; tokenizer: {', '.join(info['tokenizer_files']) or 'none'}")
        lines.append("  not resumable (no optimizer state); fine-tune further with lightbert fit --model.base DIR")
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
    if info.get("training_config"):
        lines.append("  training config:")
        lines += ["    " + line for line in info["training_config"].rstrip().splitlines()]
    return "\n".join(lines)
