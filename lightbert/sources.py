"""What a model path is: the one place that tells apart the three kinds of model lightbert loads, and checks each
before anything is built from it. ``load``, ``inspect``, ``export`` and every command go through ``identify``.

- ``lightbert``: a lightbert checkpoint (``.ckpt`` with a ``"lightbert"`` section): needs nothing else;
- ``huggingface``: a Hugging Face model directory (``config.json`` and complete weight files);
- ``recipe``: a recipe checkpoint, a Lightning checkpoint made with the common recipe (a ``LightningModule``
  holding an ``AutoModelForSequenceClassification`` under any attribute name). It has no config or tokenizer.

Checkpoints are read with ``torch.load(weights_only=True)`` (unless the user trusts the file); nothing is
downloaded and no remote code is run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lightbert.checkpoint import SECTION, epochs_completed, lightbert_section, read_checkpoint
from lightbert.errors import LightbertError
from lightbert.safety import check_model_files

Kind = Literal["lightbert", "huggingface", "recipe"]
KIND_NAMES: dict[str, str] = {
    "lightbert": "lightbert checkpoint",
    "huggingface": "Hugging Face model directory",
    "recipe": "recipe checkpoint (a Lightning checkpoint of the common recipe)",
}


@dataclass
class ModelSource:
    """A model path, identified and checked. ``config`` is the HF config as JSON data (empty for a recipe
    checkpoint, which has none); ``checkpoint`` the checkpoint as read (None for a directory)."""

    kind: Kind
    path: Path
    config: dict[str, Any]
    checkpoint: dict[str, Any] | None = None

    @property
    def section(self) -> dict[str, Any]:
        """The lightbert section of a lightbert checkpoint (empty for the other kinds)."""
        return (self.checkpoint or {}).get(SECTION) or {} if self.kind == "lightbert" else {}

    @property
    def resumable(self) -> bool:
        """Whether ``fit --ckpt_path`` can continue the run: a lightbert checkpoint with optimizer and loop state."""
        checkpoint = self.checkpoint or {}
        return self.kind == "lightbert" and bool(checkpoint.get("optimizer_states")) and "loops" in checkpoint

    @property
    def has_optimizer_state(self) -> bool:
        return bool((self.checkpoint or {}).get("optimizer_states"))


def identify(path: str | Path, trust_checkpoint: bool = False) -> ModelSource:
    """What ``path`` is, checked: a directory must be a safe HF directory with complete weight files; a file must
    be a checkpoint that weights_only loading accepts, with an intact lightbert section or (a recipe checkpoint)
    model weights. Raises a ``LightbertError`` that says what is wrong otherwise."""
    text = str(path)
    if "://" in text:
        raise LightbertError(
            f"model paths must be local, not URLs: {text}", "download the model yourself and check where it comes from"
        )
    path = Path(path)
    if path.is_dir():
        return ModelSource("huggingface", path, check_model_files(path, weights=True))
    if not path.exists():
        raise LightbertError(f"model not found: {path}", "give a .ckpt file or a Hugging Face model directory")
    checkpoint = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    if SECTION in checkpoint:
        return ModelSource("lightbert", path, lightbert_section(checkpoint, path)["hf_config"], checkpoint)
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict) or not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise LightbertError(
            f"{path} holds no model weights (no state_dict)", "give a checkpoint saved by Lightning's Trainer"
        )
    return ModelSource("recipe", path, {}, checkpoint)


@dataclass
class ModelInfo:
    """Where a loaded model came from and what its source says about it.

    ``base`` and ``prefix`` are for recipe checkpoints (the HF directory that gave the config and tokenizer, and
    where the HF model's weights sit in the state dict); ``data``, ``training_config`` and ``metrics`` come from
    a lightbert checkpoint.
    """

    kind: Kind
    path: str
    epoch: int | None = None
    epochs_completed: int | None = None
    global_step: int | None = None
    base: str | None = None
    prefix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    training_config: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    class_weights: list[float] | None = None

    @property
    def paired(self) -> bool:
        """Whether the model was trained on text pairs (as far as its source says)."""
        return bool(self.data.get("paired", self.data.get("pair")))  # "pair": checkpoints before 0.2


def model_info(source: ModelSource, base: str | Path | None = None, prefix: str | None = None) -> ModelInfo:
    checkpoint = source.checkpoint or {}
    section = source.section
    hparams = checkpoint.get("hyper_parameters")
    versions = section.get("versions") or {}
    if source.kind == "huggingface":
        versions = {"transformers": str(source.config.get("transformers_version") or "")}
    elif source.kind == "recipe":
        versions = {"lightning": str(checkpoint.get("pytorch-lightning_version") or "")}
    return ModelInfo(
        kind=source.kind,
        path=str(source.path),
        epoch=checkpoint.get("epoch"),
        epochs_completed=epochs_completed(checkpoint),
        global_step=checkpoint.get("global_step"),
        base=str(base) if base is not None else None,
        prefix=prefix,
        data=dict(section.get("data") or {}),
        training_config=section.get("training_config"),
        metrics=dict(section.get("metrics") or {}),
        versions={k: v for k, v in versions.items() if v},
        hyper_parameters=dict(hparams) if isinstance(hparams, dict) and source.kind == "recipe" else {},
        class_weights=section.get("class_weights"),
    )
