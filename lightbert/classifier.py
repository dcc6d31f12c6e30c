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

from lightbert.batching import PaddingCollator, combine_by_document, padding_aware_splits, tokenize_windows
from lightbert.devices import resolve_device
from lightbert.errors import LightbertError
from lightbert.fastpath import use_first_position_only
from lightbert.hf import labels_of, task_of, thresholds_of
from lightbert.packing import use_packed_linears
from lightbert.quantize import calibration_texts, quantize_int8
from lightbert.sources import ModelInfo

PRECISIONS = ("fp32", "bf16", "int8")
LONG_TEXTS = ("truncate", "chunk")
COMBINE_WINDOWS = ("mean", "max")
CPU_PASS_COST_TOKENS = 64  # measured on MiniLM, 2 cores: ~9 ms a pass, ~0.16 ms a token
ACCELERATOR_PASS_COST_TOKENS = 1 << 20
Texts = str | list[str] | tuple[str, ...]


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise LightbertError(f"unknown precision {precision!r}", "use fp32, bf16 or int8")


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise LightbertError(f"threshold must be between 0 and 1, not {threshold}", "pass --threshold 0.5")


@dataclass(frozen=True)
class LongTexts:
    """What to do with a text longer than the model's limit: ``truncate`` it, or ``chunk`` it into windows of the
    limit that overlap by ``stride`` tokens (default: a quarter of the limit), whose logits are combined by
    ``combine`` (``mean`` or ``max``)."""

    mode: str = "truncate"
    stride: int | None = None
    combine: str = "mean"

    def check(self, max_length: int) -> None:
        if self.mode not in LONG_TEXTS:
            raise LightbertError(f"unknown long_texts {self.mode!r}", "use truncate or chunk")
        if self.combine not in COMBINE_WINDOWS:
            raise LightbertError(f"unknown combine_windows {self.combine!r}", "use mean or max")
        if self.stride is not None and not 0 <= self.stride < max_length - 2:
            raise LightbertError(
                f"stride {self.stride} must be 0 or more and below the window of {max_length} tokens less its special"
                " tokens",
                f"pass --stride {max_length // 4}",
            )

    def overlap(self, max_length: int) -> int:
        return self.stride if self.stride is not None else max_length // 4


@dataclass
class Inference:
    """The raw outputs for a list of texts, in input order: ``logits`` (one row per text), per text whether it was
    longer than the model's limit and truncated, and (chunking) how many windows it was read in."""

    logits: torch.Tensor
    truncated: list[bool]
    windows: list[int] | None = None


class Classifier:
    """A fine-tuned sequence classifier: an HF model (eval mode), its tokenizer, its labels and where it came from.

    Build one with ``lightbert.load(path)``. ``predict(texts)`` returns one record per text, in order:
    ``{"label", "score", "probs"}`` (single-label), ``{"labels", "probs"}`` (multi-label) or ``{"score"}``
    (regression), with ``"truncated": true`` added for a text longer than the model's limit. ``model`` runs its
    last layer for the first token only (``lightbert.fastpath``): use it for classification outputs, not for the
    last hidden state. Its linear layers predict on a CPU through oneDNN with packed weights (``lightbert.packing``).
    """

    def __init__(self, model: Any, tokenizer: Any, max_length: int, info: ModelInfo) -> None:
        self.model = model.eval()
        # The same logits with less work: the last layer's feed-forward block runs only where the head reads.
        use_first_position_only(self.model)
        # On a CPU, the products through oneDNN with packed weights and the GELU in the product before it.
        use_packed_linears(self.model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.info = info
        self.task = task_of(model.config)
        self.labels: list[str] | None = labels_of(model.config) if self.task != "regression" else None
        # Multi-label: each label's threshold as picked on validation data (--model.tune_thresholds), else 0.5.
        self.thresholds: dict[str, float] | None = thresholds_of(model.config, info.path)
        self.precision = "fp32"
        self.long_texts = LongTexts()
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

    def read_long_texts(self, mode: str = "truncate", stride: int | None = None, combine: str = "mean") -> Classifier:
        """How ``predict`` treats texts longer than the model's limit from now on (see ``LongTexts``)."""
        long_texts = LongTexts(mode, stride, combine)
        long_texts.check(self.max_length)
        self.long_texts = long_texts
        return self

    def encode_windows(
        self, texts: list[str], pairs: list[str] | None, stride: int
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """Token ids per window (each text's windows of ``max_length`` overlapping by ``stride`` tokens; a text pair
        is windowed along its first text) and, per window, the text it belongs to."""
        try:
            features, owners = tokenize_windows(self.tokenizer, texts, pairs, self.max_length, stride)
        except ValueError as err:
            hint = "pass a smaller --stride, or read long texts with --long_texts truncate"
            raise LightbertError(str(err), hint) from None
        keys = list(features)
        items = [{**{k: features[k][w] for k in keys}, "index": w} for w in range(len(owners))]
        return items, owners

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> tuple[list[dict[str, Any]], list[bool]]:
        """Token ids per text (truncated to ``max_length``) and, per text, whether it was truncated."""
        check_inputs(texts, pairs)
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

    def infer(
        self, texts: Texts, pairs: Texts | None = None, batch_size: int = 64, long_texts: LongTexts | None = None
    ) -> Inference:
        """Logits for ``texts`` (and their second texts), one row per text in input order, and which texts were
        truncated (or, chunking, in how many windows each was read; see ``read_long_texts``)."""
        texts, pairs = _as_list(texts), _as_list(pairs) if pairs is not None else None
        if batch_size < 1:
            raise LightbertError(f"batch_size must be at least 1, not {batch_size}", "pass --batch_size 64")
        long_texts = long_texts or self.long_texts
        if not texts:  # nothing to tokenize: no rows, of the model's width
            check_inputs(texts, pairs)
            return Inference(
                torch.empty(0, self.model.config.num_labels), [], [] if long_texts.mode == "chunk" else None
            )
        if long_texts.mode == "chunk":
            check_inputs(texts, pairs)
            items, owners = self.encode_windows(texts, pairs, long_texts.overlap(self.max_length))
            window_logits = self._run(items, batch_size)
            return combine_windows(window_logits, owners, len(texts), long_texts.combine)
        items, truncated = self.encode(texts, pairs)
        return Inference(self._run(items, batch_size), truncated)

    def _run(self, items: list[dict[str, Any]], batch_size: int) -> torch.Tensor:
        """The model's logits for tokenized ``items``, in their order: sorted by length into passes cut where
        lengths jump, eval mode and inference mode."""
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
        return logits

    def logits(self, texts: Texts, pairs: Texts | None = None, batch_size: int = 64) -> torch.Tensor:
        """Raw model outputs, one row per text, in input order (no texts: a tensor of shape ``(0, num_labels)``)."""
        return self.infer(texts, pairs, batch_size).logits

    def records(
        self,
        logits: torch.Tensor,
        threshold: float | None = None,
        truncated: list[bool] | None = None,
        windows: list[int] | None = None,
    ) -> list[dict[str, Any]]:
        """Prediction records from logits (one row per text; none: no records): label names, scores and
        probabilities in label-id order. Multi-label: a label is predicted from ``threshold`` on, by default from the
        model's own thresholds (or 0.5)."""
        if threshold is not None:
            check_threshold(threshold)
        if not isinstance(logits, torch.Tensor):
            logits = torch.as_tensor(logits, dtype=torch.float32)
        if logits.numel() == 0:
            return []
        if self.task == "regression":
            records: list[dict[str, Any]] = [{"score": float(v)} for v in logits[:, 0].tolist()]
        elif self.task == "multi_label":
            names = self.labels or []
            probs = torch.sigmoid(logits).tolist()
            own = self.thresholds or {}
            cuts = [threshold if threshold is not None else own.get(name, 0.5) for name in names]
            records = [
                {
                    "labels": [n for n, p, cut in zip(names, row, cuts, strict=True) if p >= cut],
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
        for record, count in zip(records, windows or [1] * len(records), strict=True):
            if count > 1:
                record["windows"] = count
        return records

    def predict(
        self,
        texts: Texts,
        pairs: Texts | None = None,
        batch_size: int = 64,
        threshold: float | None = None,
        long_texts: str | None = None,
        stride: int | None = None,
        combine: str | None = None,
    ) -> list[dict[str, Any]]:
        """One record per text, in input order (see the class docstring). ``long_texts="chunk"`` reads a text longer
        than the model's limit in windows overlapping by ``stride`` tokens and combines their logits (``combine``:
        ``mean`` or ``max``); its record says in how many (``"windows"``). Unset, these are ``read_long_texts``'s."""
        policy = self.long_texts
        if long_texts is not None or stride is not None or combine is not None:
            policy = LongTexts(long_texts or policy.mode, stride if stride is not None else policy.stride,
                               combine or policy.combine)  # fmt: skip
            policy.check(self.max_length)
        inference = self.infer(texts, pairs, batch_size, policy)
        return self.records(inference.logits, threshold, inference.truncated, inference.windows)


def check_inputs(texts: list[str], pairs: list[str] | None) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise LightbertError(f"text {i + 1} is a {type(text).__name__}, not a string", "pass strings")
    if pairs is not None and len(pairs) != len(texts):
        raise LightbertError(f"{len(texts)} texts but {len(pairs)} second texts", "give one second text per text")


def combine_windows(window_logits: torch.Tensor, owners: list[int], count: int, combine: str) -> Inference:
    """Per text, the mean (or the maximum) of its windows' logits; a text of one window keeps that window's logits
    exactly (its sum is itself, divided by 1)."""
    index = torch.tensor(owners, dtype=torch.long)
    logits, _ = combine_by_document(window_logits, index, combine)
    return Inference(logits, [False] * count, torch.bincount(index, minlength=count).tolist())


def _as_list(texts: Texts) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)
