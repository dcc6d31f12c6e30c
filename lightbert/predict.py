"""Prediction with a loaded classifier: label names, probabilities, deterministic and batch-invariant.

Always eval mode + ``torch.inference_mode()`` (the model's previous mode is restored afterwards), texts sorted by
length into batches padded to their longest member, results returned in input order. Batching never changes a
result beyond float rounding (checked against one-by-one prediction in the tests).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lightbert.data import PaddingCollator, iter_tables, select_columns, table_error
from lightbert.errors import LightbertError
from lightbert.fastpath import use_first_position_only
from lightbert.safety import atomic_write


def resolve_device(device: str | torch.device = "auto", precision: str = "fp32") -> torch.device:
    """The device to predict on: ``auto`` is the first GPU (CUDA, else Apple MPS) when there is one, else the CPU
    (always the CPU for ``int8``, which runs there only); ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked to
    exist on this machine, and to suit ``precision``."""
    name = str(device)
    if name == "auto":
        if precision == "int8":
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise LightbertError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise LightbertError(f"device {name!r} asked for, but this machine has no CUDA GPU that PyTorch can use",
                                 "use --device cpu, or a PyTorch build with CUDA")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= count:
            raise LightbertError(f"device {name!r} asked for, but this machine has {count} CUDA GPU(s)", f"use cuda:0 to cuda:{count - 1}")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise LightbertError(f"device {name!r} asked for, but Apple MPS is not available here", "use --device cpu")
    if precision == "int8" and resolved.type != "cpu":
        raise LightbertError(f"int8 runs on the CPU only, not on {name}", "use --precision bf16 or fp32 on a GPU")
    return resolved


def task_of(config: Any) -> str:
    """single_label, multi_label or regression, from an HF config."""
    if config.problem_type == "multi_label_classification":
        return "multi_label"
    if config.problem_type == "regression" or config.num_labels == 1:
        return "regression"
    return "single_label"


class Classifier:
    """A fine-tuned sequence classifier ready to predict: an HF model (eval mode), its tokenizer and labels.

    Build one with ``lightbert.load(path)``. ``predict(texts)`` returns one record per text, in order:
    ``{"label", "score", "probs"}`` (single-label), ``{"labels", "probs"}`` (multi-label) or ``{"score"}``
    (regression). ``model`` runs its last layer for the first token only (``lightbert.fastpath``): use it for
    classification outputs, not for the last hidden state.
    """

    def __init__(self, model: Any, tokenizer: Any, max_length: int, source: str, path: str, info: dict[str, Any]) -> None:
        self.model = model.eval()
        # The same logits with ~11% less work: the last layer's feed-forward block runs only where the head reads.
        use_first_position_only(self.model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.source = source
        self.path = path
        self.info = info
        self.task = task_of(model.config)
        id2label = model.config.id2label
        self.labels = [str(id2label[i]) for i in range(model.config.num_labels)] if self.task != "regression" else None
        self._forward_args = set(inspect.signature(model.forward).parameters)
        if getattr(model.config, "type_vocab_size", 2) <= 1:
            self._forward_args.discard("token_type_ids")
        self._collate = PaddingCollator(tokenizer.pad_token_id or 0, getattr(tokenizer, "padding_side", "right"))
        self.last_truncated = 0
        self.total_truncated = 0
        self.precision = "fp32"

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> Classifier:
        """Move the model to ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; see ``resolve_device``).
        Inputs follow the model; results always come back on the CPU."""
        self.model.to(resolve_device(device, self.precision))
        return self

    def set_precision(self, precision: str) -> Classifier:
        """``fp32`` (default, exact), ``bf16`` (weights in bfloat16: about twice as fast on GPUs and CPUs with
        AMX/AVX512-BF16, much slower on CPUs without them) or ``int8`` (CPUs: int8 matrix products on smoothed inputs,
        ``lightbert.quantize``; labels agree with fp32 on about 99.5% of SST-2 in benchmarks/predict.py). int8 is
        one-way: load the model again for another precision."""
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        if precision not in (*dtypes, "int8"):
            raise LightbertError(f"unknown precision {precision!r}", "use fp32, bf16 or int8")
        if precision == self.precision:
            return self
        if self.precision == "int8":
            raise LightbertError("this classifier is already quantized to int8", "load the model again for another precision")
        if precision == "int8":
            from lightbert.quantize import quantize_int8

            quantize_int8(self)
        else:
            self.model.to(dtypes[precision])
        self.precision = precision
        return self

    @property
    def trained_on_pairs(self) -> bool:
        return bool(((self.info.get("section") or {}).get("data") or {}).get("pair"))

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], int]:
        """Token ids per text (truncated to max_length) and how many texts were truncated."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise LightbertError(f"text {i + 1} is a {type(text).__name__}, not a string", "pass strings")
        if pairs is not None and len(pairs) != len(texts):
            raise LightbertError(f"{len(texts)} texts but {len(pairs)} second texts", "give one second text per text")
        encoded = self.tokenizer(list(texts), text_pair=list(pairs) if pairs is not None else None, truncation=True,
                                 max_length=self.max_length, padding=False, return_attention_mask=False)
        truncated = sum(1 for e in encoded.encodings if e.overflowing) if encoded.encodings else 0
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        items = [{**{k: encoded[k][i] for k in keys}, "index": i} for i in range(len(texts))]
        return items, truncated

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64) -> torch.Tensor:
        """Raw model outputs, one row per text, in input order."""
        if batch_size < 1:
            raise LightbertError(f"batch_size must be at least 1, not {batch_size}", "pass --batch_size 64")
        items, self.last_truncated = self.encode(texts, pairs)
        order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]), reverse=True)
        device = self.device
        was_training = self.model.training
        self.model.eval()
        sorted_logits = []
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    batch = self._collate([items[i] for i in order[start:start + batch_size]])
                    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in self._forward_args}
                    sorted_logits.append(self.model(**inputs).logits.float())
        finally:
            self.model.train(was_training)
        out = torch.empty(len(items), self.model.config.num_labels)
        if sorted_logits:  # one copy back from an accelerator, not one wait per batch
            out[torch.tensor(order)] = torch.cat(sorted_logits).cpu()
        return out

    def records(self, logits: torch.Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
        """Prediction records from logits: label names, scores and probabilities in label-id order."""
        if self.task == "regression":
            return [{"score": float(v)} for v in logits[:, 0].tolist()]
        names = self.labels or []
        if self.task == "multi_label":
            probs = torch.sigmoid(logits).tolist()
            return [{"labels": [n for n, p in zip(names, row) if p >= threshold], "probs": dict(zip(names, row))} for row in probs]
        probs = torch.softmax(logits, dim=-1)
        best = probs.argmax(dim=-1).tolist()
        return [{"label": names[b], "score": row[b], "probs": dict(zip(names, row))} for b, row in zip(best, probs.tolist())]

    def predict(self, texts: str | Sequence[str], pairs: str | Sequence[str] | None = None, batch_size: int = 64,
                threshold: float = 0.5) -> list[dict[str, Any]]:
        """One record per text, in input order (see the class docstring)."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(pairs, str):
            pairs = [pairs]
        return self.records(self.logits(texts, pairs, batch_size), threshold)


# -- reading texts and writing results ---------------------------------------------------------------------------------


TextChunk = tuple[list[str], "list[str] | None"]


def iter_text_chunks(path: str | Path, text_column: int | str | None = None, text_pair_column: int | str | None = None,
                     pairs: bool = False, chunk_size: int = 4096) -> Iterator[TextChunk]:
    """Texts to predict, ``chunk_size`` rows at a time, so memory stays flat however long the file is.

    ``.txt`` is one text per line (empty lines are empty texts); CSV/TSV/JSONL/Parquet use ``text_column``
    (default: text/sentence/..., else the first column) and, for pair models, ``text_pair_column``."""
    path = Path(path)
    if not path.is_file():
        raise LightbertError(f"input file not found: {path}", "check the path")
    if path.suffix.lower() == ".txt":
        if text_pair_column is not None or pairs:
            raise LightbertError(f"{path} is plain text, which has no second text for a pair", "use a CSV/TSV/JSONL/Parquet file with --text_pair_column")
        yield from _txt_chunks(path, chunk_size)
        return
    if pairs and text_pair_column is None:
        raise LightbertError("this model was trained on text pairs", "pass --text_pair_column with the column of the second text")
    first_row = 1
    for table in iter_tables(path, None, [text_column, text_pair_column], chunk_size=chunk_size):
        texts, second, _ = select_columns(table, path, text_column, text_pair_column, None, require_label=False,
                                          detect_pair=False, first_row=first_row)
        first_row += len(texts)
        yield texts, second


def _txt_chunks(path: Path, chunk_size: int) -> Iterator[TextChunk]:
    chunk: list[str] = []
    try:
        with open(path, encoding="utf-8", newline=None) as f:
            for line in f:
                chunk.append(line[:-1] if line.endswith("\n") else line)
                if len(chunk) == chunk_size:
                    yield chunk, None
                    chunk = []
    except UnicodeDecodeError as err:
        raise table_error(path, "text", err) from None
    if chunk:
        yield chunk, None


def count_rows(path: str | Path) -> int | None:
    """How many texts a file holds, cheaply (for the progress bar's ETA): newlines, or Parquet's metadata."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        count, last = 0, b"\n"
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                count += block.count(b"\n")
                last = block[-1:]
        return count + (last != b"\n")
    except OSError:
        return None


def predict_stream(classifier: Classifier, chunks: Iterable[TextChunk], batch_size: int = 64, threshold: float = 0.5,
                   progress: Any = None) -> Iterator[dict[str, Any]]:
    """Records for each chunk of texts as it comes; counts truncated texts in ``classifier.total_truncated``."""
    classifier.total_truncated = 0
    for texts, pairs in chunks:
        records = classifier.predict(texts, pairs, batch_size=batch_size, threshold=threshold)
        classifier.total_truncated += classifier.last_truncated
        if progress is not None:
            progress.update(len(texts))
        yield from records


def write_atomically(path: str | Path, lines: Iterable[str], overwrite: bool = False) -> None:
    """Write text lines to ``path`` atomically; an existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise LightbertError(f"output file exists: {path}", "choose another path or pass --overwrite")
    if not path.parent.is_dir():
        raise LightbertError(f"output directory not found: {path.parent}", "create it first")

    def write(f: Any) -> None:
        for line in lines:
            f.write(line.encode("utf-8"))

    atomic_write(path, write, what="output")


def to_jsonl(records: Iterable[dict[str, Any]]) -> Iterable[str]:
    for record in records:
        yield json.dumps(record, ensure_ascii=False) + "\n"
