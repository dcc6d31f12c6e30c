"""The ``Classifier``: a fine-tuned sequence classifier ready to predict, with label names and probabilities.

Always eval mode + ``torch.inference_mode()`` (the model's previous mode is restored afterwards), texts sorted by
length into batches padded to their longest member, results returned in input order. Batching never changes a
result beyond float rounding, and the same input gives bitwise the same output.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from lightbert.batching import PaddingCollator, padding_aware_splits
from lightbert.devices import resolve_device
from lightbert.errors import LightbertError
from lightbert.fastpath import use_first_position_only
from lightbert.hf import labels_of, task_of
from lightbert.quantize import calibration_texts, quantize_int8
from lightbert.sources import ModelInfo

PRECISIONS = ("fp32", "bf16", "int8")
CPU_PASS_COST_TOKENS = 64  # measured on MiniLM, 2 cores: ~9 ms a pass, ~0.16 ms a token
ACCELERATOR_PASS_COST_TOKENS = 1 << 20
Texts = str | list[str] | tuple[str, ...]


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise LightbertError(f"unknown precision {precision!r}", "use fp32, bf16 or int8")


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise LightbertError(f"threshold must be between 0 and 1, not {threshold}", "pass --threshold 0.5")


@dataclass
class Inference:
    """The raw outputs for a list of texts, in input order: ``logits`` (one row per text) and, per text, whether it
    was longer than the model's limit and truncated."""

    logits: torch.Tensor
    truncated: list[bool]


class Classifier:
    """A fine-tuned sequence classifier: an HF model (eval mode), its tokenizer, its labels and where it came from.

    Build one with ``lightbert.load(path)``. ``predict(texts)`` returns one record per text, in order:
    ``{"label", "score", "probs"}`` (single-label), ``{"labels", "probs"}`` (multi-label) or ``{"score"}``
    (regression), with ``"truncated": true`` added for a text longer than the model's limit. ``model`` runs its
    last layer for the first token only (``lightbert.fastpath``): use it for classification outputs, not for the
    last hidden state.
    """

    def __init__(self, model: Any, tokenizer: Any, max_length: int, info: ModelInfo) -> None:
        self.model = model.eval()
        # The same logits with less work: the last layer's feed-forward block runs only where the head reads.
        use_first_position_only(self.model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.info = info
        self.task = task_of(model.config)
        self.labels: list[str] | None = labels_of(model.config) if self.task != "regression" else None
        self.precision = "fp32"
        self._forward_args = set(inspect.signature(model.forward).parameters)
        if getattr(model.config, "type_vocab_size", 2) <= 1:
            self._forward_args.discard("token_type_ids")  # one segment type (RoBERTa): a pair's 1s would not index
        self._collate = PaddingCollator(tokenizer.pad_token_id or 0, getattr(tokenizer, "padding_side", "right"))

    @property
    def paired(self) -> bool:
        """Whether the model was trained on text pairs (then each text needs its second text)."""
        return self.info.paired

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> Classifier:
        """Move the model to ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; see
        ``lightbert.devices.resolve_device``). Inputs follow the model; results always come back on the CPU."""
        self.model.to(resolve_device(device, self.precision))
        return self

    def set_precision(self, precision: str) -> Classifier:
        """``fp32`` (default, exact), ``bf16`` (weights in bfloat16: faster on GPUs and CPUs with AMX/AVX512-BF16,
        much slower on CPUs without them) or ``int8`` (CPUs: int8 matrix products on smoothed inputs,
        ``lightbert.quantize``; approximate). int8 is one-way: load the model again for another precision."""
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        check_precision(precision)
        if precision == self.precision:
            return self
        if self.precision == "int8":
            raise LightbertError(
                "this classifier is already quantized to int8", "load the model again for another precision"
            )
        if precision == "int8":
            resolve_device(self.device, "int8")  # refuses a model already on a GPU, as --device does
            texts = calibration_texts()
            pairs = texts[1:] + texts[:1] if self.paired else None  # each text with the next as its second text
            quantize_int8(self.model, lambda: self.infer(texts, pairs))
        else:
            self.model.to(dtypes[precision])
        self.precision = precision
        return self

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> tuple[list[dict[str, Any]], list[bool]]:
        """Token ids per text (truncated to ``max_length``) and, per text, whether it was truncated."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise LightbertError(f"text {i + 1} is a {type(text).__name__}, not a string", "pass strings")
        if pairs is not None and len(pairs) != len(texts):
            raise LightbertError(f"{len(texts)} texts but {len(pairs)} second texts", "give one second text per text")
        encoded = self.tokenizer(
            list(texts),
            text_pair=list(pairs) if pairs is not None else None,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
        )
        truncated = [bool(e.overflowing) for e in encoded.encodings] if encoded.encodings else [False] * len(texts)
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        items = [{**{k: encoded[k][i] for k in keys}, "index": i} for i in range(len(texts))]
        return items, truncated

    def infer(self, texts: Texts, pairs: Texts | None = None, batch_size: int = 64) -> Inference:
        """Logits for ``texts`` (and their second texts), one row per text in input order, and which texts were
        truncated."""
        texts, pairs = _as_list(texts), _as_list(pairs) if pairs is not None else None
        if batch_size < 1:
            raise LightbertError(f"batch_size must be at least 1, not {batch_size}", "pass --batch_size 64")
        items, truncated = self.encode(texts, pairs)
        order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]), reverse=True)
        device = self.device
        # Forward passes cut where lengths jump: on a CPU a pass costs about 64 tokens' worth on top of its padded
        # tokens; on an accelerator passes are what costs, so they stay full.
        pass_cost = CPU_PASS_COST_TOKENS if device.type == "cpu" else ACCELERATOR_PASS_COST_TOKENS
        starts = padding_aware_splits([len(items[i]["input_ids"]) for i in order], batch_size, pass_cost)
        was_training = self.model.training
        self.model.eval()
        sorted_logits = []
        try:
            with torch.inference_mode():
                for start, end in zip(starts, [*starts[1:], len(order)], strict=True):
                    batch = self._collate([items[i] for i in order[start:end]])
                    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in self._forward_args}
                    sorted_logits.append(self.model(**inputs).logits.float())
        finally:
            self.model.train(was_training)
        logits = torch.empty(len(items), self.model.config.num_labels)
        if sorted_logits:  # one copy back from an accelerator, not one wait per batch
            logits[torch.tensor(order)] = torch.cat(sorted_logits).cpu()
        return Inference(logits, truncated)

    def logits(self, texts: Texts, pairs: Texts | None = None, batch_size: int = 64) -> torch.Tensor:
        """Raw model outputs, one row per text, in input order."""
        return self.infer(texts, pairs, batch_size).logits

    def records(
        self, logits: torch.Tensor, threshold: float = 0.5, truncated: list[bool] | None = None
    ) -> list[dict[str, Any]]:
        """Prediction records from logits: label names, scores and probabilities in label-id order."""
        check_threshold(threshold)
        if self.task == "regression":
            records: list[dict[str, Any]] = [{"score": float(v)} for v in logits[:, 0].tolist()]
        elif self.task == "multi_label":
            names = self.labels or []
            probs = torch.sigmoid(logits).tolist()
            records = [
                {
                    "labels": [n for n, p in zip(names, row, strict=True) if p >= threshold],
                    "probs": dict(zip(names, row, strict=True)),
                }
                for row in probs
            ]
        else:
            names = self.labels or []
            softmax = torch.softmax(logits, dim=-1)
            best = softmax.argmax(dim=-1).tolist()
            records = [
                {"label": names[b], "score": row[b], "probs": dict(zip(names, row, strict=True))}
                for b, row in zip(best, softmax.tolist(), strict=True)
            ]
        for record, was_truncated in zip(records, truncated or [False] * len(records), strict=True):
            if was_truncated:
                record["truncated"] = True
        return records

    def predict(
        self, texts: Texts, pairs: Texts | None = None, batch_size: int = 64, threshold: float = 0.5
    ) -> list[dict[str, Any]]:
        """One record per text, in input order (see the class docstring)."""
        inference = self.infer(texts, pairs, batch_size)
        return self.records(inference.logits, threshold, inference.truncated)


def _as_list(texts: Texts) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)
