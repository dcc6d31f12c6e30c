"""Reading tables of texts and labels, encoding labels, and batching them for training.

The pieces, in the order data flows through them:
``read_table`` (CSV/TSV/JSONL/Parquet -> Table), ``select_columns`` (names or positions -> texts, pairs,
labels), ``LabelEncoder`` (raw labels -> task, label names, targets), ``TokenizedDataset`` (token ids once, up
front), ``LengthGroupedSampler`` (seeded, resumable, length-grouped order) and ``PaddingCollator`` (pad to the
longest in the batch). ``lightbert.datamodule.ClassificationDataModule`` ties them together for Lightning; this
module needs neither Lightning nor a model, so prediction stays quick to start.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lightbert.errors import LightbertError

Task = Literal["single_label", "multi_label", "regression"]
TASKS: tuple[str, ...] = ("single_label", "multi_label", "regression")
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
RESOURCES = Path(__file__).parent / "resources"
BUNDLED_TRAIN = RESOURCES / "sst2" / "train.tsv"
BUNDLED_VALIDATION = RESOURCES / "sst2" / "validation.tsv"
# Column names we look for, in order, when the user names none.
TEXT_NAMES = ("text", "sentence", "sentence1", "question", "premise", "content")
PAIR_NAMES = ("text_pair", "sentence2", "question2", "hypothesis")
LABEL_NAMES = ("label", "labels", "score", "target", "class")
_HEADER_CELL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")

Column = int | str | None


def table_format(path: str | Path) -> str:
    """The format of a data file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise LightbertError(
            f"unsupported data file type {suffix or '(none)'!r}: {path}",
            "use .csv, .tsv, .jsonl or .parquet",
        )
    return TABLE_SUFFIXES[suffix]


def _identifiers(cells: Sequence[str]) -> bool:
    return len(set(cells)) == len(cells) and all(_HEADER_CELL.match(c) for c in cells)


def _looks_like_header(rows: list[list[str]], expected: Sequence[str] = ()) -> bool:
    # A header row is short identifiers, all different ('sentence', 'label'), that either name a column we look
    # for or are followed by rows that are not identifiers (prose, numbers).
    if not rows or not _identifiers(rows[0]):
        return False
    names = {c.lower() for c in rows[0]}
    wanted = {str(e).lower() for e in expected} | set(TEXT_NAMES) | set(PAIR_NAMES) | set(LABEL_NAMES)
    return bool(names & wanted) or any(not _identifiers(row) for row in rows[1:])


class Table:
    """The rows of a data file, column by column: column name -> cell values, in file order.

    Headerless CSV/TSV files name their columns 0, 1, ... CSV/TSV cells are strings; JSONL and Parquet cells keep
    their JSON/Arrow types (numbers, lists, None for null or absent).
    """

    def __init__(self, columns: dict[Any, list[Any]]) -> None:
        self.data = columns

    @property
    def columns(self) -> list[Any]:
        return list(self.data)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), len(self.data)

    def __len__(self) -> int:
        return len(next(iter(self.data.values()), []))

    def __getitem__(self, column: Any) -> list[Any]:
        return self.data[column]


def read_table(path: str | Path, header: bool | None = None, expected_columns: Sequence[Any] = ()) -> Table:
    """Read a CSV, TSV, JSON Lines or Parquet file whole.

    CSV/TSV cells are kept as strings. ``header=None`` detects whether the first row is a header: it is when every
    cell is a short identifier and no two are equal. Headerless tables get integer column names 0, 1, ...
    TSV is read without quote processing, as GLUE publishes it (quotes are part of the text).
    ``expected_columns``: column names the caller will ask for; finding one in the first row marks a header.
    """
    tables = list(iter_tables(path, header, expected_columns))
    if not tables:
        raise LightbertError(f"data file has no rows: {path}", "give a file with at least one row")
    return Table({name: [v for t in tables for v in t[name]] for name in tables[0].columns}) if len(tables) > 1 else tables[0]


def iter_tables(path: str | Path, header: bool | None = None, expected_columns: Sequence[Any] = (),
                chunk_size: int = 1 << 62) -> Iterator[Table]:
    """The rows of a data file, ``chunk_size`` rows at a time (see ``read_table``), so a long file streams.

    Python's own csv and json readers (and pyarrow for Parquet) rather than pandas: importing pandas costs
    ~60 MiB of memory that training and prediction would carry to the end.
    """
    path = Path(path)
    if not path.is_file():
        raise LightbertError(f"data file not found: {path}", "check the path")
    fmt = table_format(path)
    try:
        if path.stat().st_size == 0:
            raise LightbertError(f"data file is empty: {path}", "give a file with at least one row")
        if fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=min(chunk_size, 1 << 20)):
                yield Table({name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)})
        else:
            with open(path, encoding="utf-8-sig", newline="" if fmt != "jsonl" else None) as f:
                if fmt == "jsonl":
                    yield from _jsonl_chunks(f, path, chunk_size)
                else:
                    yield from _delimited_chunks(f, path, fmt, header, expected_columns, chunk_size)
    except LightbertError:
        raise
    except Exception as err:
        raise table_error(path, fmt, err) from None


def _csv_reader(f: Any, fmt: str) -> Iterator[list[str]]:
    csv.field_size_limit(1 << 30)  # a long document is one cell; the default limit is 128 KiB
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(f)
    return (row for row in reader if row)  # blank lines are not rows


def _delimited_chunks(f: Any, path: Path, fmt: str, header: bool | None, expected_columns: Sequence[Any],
                      chunk_size: int) -> Iterator[Table]:
    rows = _csv_reader(f, fmt)
    first = list(itertools.islice(rows, 20))
    if not first:
        return
    if header is None:
        header = _looks_like_header(first, [c for c in expected_columns if isinstance(c, str)])
    names: list[Any] = _unique_names(first[0]) if header else list(range(len(first[0])))
    rows = itertools.chain(first[1:] if header else first, rows)
    row_number = 1  # data rows, counted as in the other errors about rows (the header is not a row)
    while chunk := list(itertools.islice(rows, chunk_size)):
        for offset, row in enumerate(chunk):
            if len(row) != len(names):
                raise LightbertError(
                    f"{path}: row {row_number + offset} has {len(row)} fields, {'the header' if header else 'the first row'} has {len(names)}",
                    "check the delimiter and the quoting (TSV cells cannot hold tabs or newlines)",
                )
        row_number += len(chunk)
        yield Table({name: [row[i] for row in chunk] for i, name in enumerate(names)})


def _unique_names(cells: list[str]) -> list[str]:
    # Repeated header names get .1, .2 ... as pandas names them, so every column stays reachable by name.
    names: list[str] = []
    for cell in cells:
        name, n = cell, 0
        while name in names:
            n += 1
            name = f"{cell}.{n}"
        names.append(name)
    return names


def _jsonl_chunks(f: Any, path: Path, chunk_size: int) -> Iterator[Table]:
    records: list[dict[str, Any]] = []
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LightbertError(f"cannot read {path} as jsonl: line {number}: {err.msg}", "write one JSON object per line") from None
        if not isinstance(record, dict):
            raise LightbertError(f"{path}: line {number} is not a JSON object", 'write one object per line, like {"text": "...", "label": "..."}')
        records.append(record)
        if len(records) == chunk_size:
            yield _records_table(records)
            records = []
    if records:
        yield _records_table(records)


def _records_table(records: list[dict[str, Any]]) -> Table:
    names = list(dict.fromkeys(key for record in records for key in record))
    return Table({name: [record.get(name) for record in records] for name in names})


def table_error(path: Path, fmt: str, err: Exception) -> LightbertError:
    """A reading error of csv/json/pyarrow as a clear, one-line LightbertError."""
    if isinstance(err, LightbertError):
        return err
    if isinstance(err, UnicodeDecodeError):
        return LightbertError(f"{path} is not valid UTF-8 text (byte {err.start} of a block)", "save the file as UTF-8")
    if isinstance(err, FileNotFoundError):
        return LightbertError(f"data file not found: {path}", "check the path")
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LightbertError(f"cannot read {path} as {fmt}: {first_line[:200]}", "check the file's format")


def resolve_column(table: Table, column: Column, role: str, path: str | Path) -> Any:
    """The table column a user means by a name or a 0-based position."""
    columns = list(table.columns)
    if isinstance(column, str) and column.isdigit() and column not in columns:
        column = int(column)
    if isinstance(column, int) and not isinstance(column, bool):
        if column in columns:  # headerless tables name their columns 0, 1, ...
            return column
        if 0 <= column < len(columns):
            return columns[column]
        raise LightbertError(
            f"{path} has {len(columns)} columns, so it has no {role} column at position {column}",
            f"choose a position from 0 to {len(columns) - 1}",
        )
    if column in columns:
        return column
    shown = ", ".join(map(str, columns[:12]))
    raise LightbertError(f"{path} has no {role} column {column!r} (columns: {shown})", f"pass --data.{role}_column")


def _default_column(table: Table, candidates: Sequence[str], fallback: int | None) -> Any:
    names = {str(c).lower(): c for c in table.columns}
    for name in candidates:
        if name in names:
            return names[name]
    if fallback is None:
        return None
    return list(table.columns)[fallback]


def select_columns(
    table: Table,
    path: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    label_column: Column = None,
    require_label: bool = True,
    detect_pair: bool = True,
    first_row: int = 1,
) -> tuple[list[str], list[str] | None, list[Any] | None]:
    """Texts, optional second texts and labels from a table.

    Unnamed columns default to a text column called text/sentence/... (else the first column), a pair column
    only when one is called sentence2/text_pair/..., and a label column called label/... (else the last column).
    """
    text_key = resolve_column(table, text_column, "text", path) if text_column is not None else _default_column(table, TEXT_NAMES, 0)
    if text_pair_column is not None:
        pair_key = resolve_column(table, text_pair_column, "text_pair", path)
    else:
        pair_key = _default_column(table, PAIR_NAMES, None) if detect_pair else None
    label_key = None
    if label_column is not None:
        label_key = resolve_column(table, label_column, "label", path)
    elif require_label:
        label_key = _default_column(table, LABEL_NAMES, -1)
        if label_key in (text_key, pair_key):
            raise LightbertError(f"{path} has no label column", "pass --data.label_column (a name or a 0-based position)")
    texts = _text_values(table[text_key], path, "text", first_row)
    pairs = _text_values(table[pair_key], path, "text_pair", first_row) if pair_key is not None else None
    labels = list(table[label_key]) if label_key is not None else None
    return texts, pairs, labels


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_missing_label(value: Any) -> bool:
    return _is_missing(value) or (isinstance(value, str) and not value.strip())


def _text_values(values: list[Any], path: str | Path, role: str, first_row: int = 1) -> list[str]:
    for row, value in enumerate(values):
        if _is_missing(value):
            raise LightbertError(f"{path}: row {row + first_row} has no {role}", "fill in the text or remove the row")
    return [v if isinstance(v, str) else str(v) for v in values]


# ---------------------------------------------------------------------------------------------------------------
# Labels


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _label_name(value: Any) -> str:
    number = _as_number(value)
    if number is not None and number.is_integer():
        return str(int(number))
    return str(value).strip()


def _sort_names(names: set[str]) -> list[str]:
    # Integers sort as numbers (2 before 10); other names alphabetically. Stable across runs and machines.
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def infer_task(labels: Sequence[Any], delimiter: str | None = None) -> str:
    """single_label, multi_label or regression, from the labels themselves.

    Lists (JSONL/Parquet) or delimited strings mean multi-label; numbers that are not all whole (or are written
    with a decimal point, like STS-B's 3.800) mean regression; anything else is single-label.
    """
    present = [v for v in labels if not _is_missing_label(v)]
    if any(_is_list(v) for v in present) or (delimiter and any(isinstance(v, str) and delimiter in v for v in present)):
        return "multi_label"
    numbers = [_as_number(v) for v in present]
    if present and all(n is not None for n in numbers):
        written_as_float = any(isinstance(v, float) or (isinstance(v, str) and re.search(r"[.eE]", v)) for v in present)
        if written_as_float or not all(n.is_integer() for n in numbers):  # type: ignore[union-attr]
            return "regression"
    return "single_label"


class LabelEncoder:
    """Turns raw labels into training targets for one task, with label names in a fixed order.

    Single-label targets are class ids (int64), multi-label targets multi-hot float vectors, regression targets
    floats. Label names come from ``labels`` if given, else from the training labels (integers in numeric order,
    strings alphabetically).
    """

    def __init__(self, task: str, names: list[str] | None = None, delimiter: str | None = None) -> None:
        if task not in TASKS:
            raise LightbertError(f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
        self.task = task
        self.names = list(names) if names is not None else None
        self.delimiter = delimiter

    @classmethod
    def fit(cls, labels: Sequence[Any], task: str | None = None, names: list[str] | None = None,
            delimiter: str | None = None, source: str = "training data") -> LabelEncoder:
        task = task or infer_task(labels, delimiter)
        encoder = cls(task, names, delimiter)
        if task == "regression":
            encoder.names = None
            return encoder
        found = set()
        for row_labels in encoder._split(labels, source):
            found.update(row_labels)
        if encoder.names is None:
            if task == "single_label":
                kinds = {bool(re.fullmatch(r"-?\d+", n)) for n in found}
                if len(kinds) > 1:
                    raise LightbertError(
                        f"{source} mixes numeric and text labels: {', '.join(sorted(found)[:8])}",
                        "use one kind of label, or pass --data.labels with the label names",
                    )
            encoder.names = _sort_names(found)
        else:
            encoder.check_known(found, source)
        if task == "single_label" and len(encoder.names) < 2:
            raise LightbertError(f"{source} has only one label ({', '.join(encoder.names)})", "classification needs at least two labels")
        return encoder

    def check_known(self, found: set[str], source: str) -> None:
        unknown = sorted(found - set(self.names or []))
        if unknown:
            raise LightbertError(
                f"{source} has labels the model does not know: {', '.join(unknown[:10])}"
                f" (known: {', '.join((self.names or [])[:10])})",
                "fix the labels, or train with data that has them",
            )

    def _split(self, labels: Sequence[Any], source: str) -> list[list[str]]:
        rows = []
        for row, value in enumerate(labels):
            if self.task == "multi_label" and isinstance(value, str) and not value.strip():
                rows.append([])  # no label applies
                continue
            if _is_missing_label(value):
                raise LightbertError(f"{source}: row {row + 1} has no label", "fill in the label or remove the row")
            if self.task == "multi_label":
                if _is_list(value):
                    parts = [_label_name(v) for v in value]
                elif isinstance(value, str):
                    parts = [p.strip() for p in value.split(self.delimiter or ",")]
                else:
                    parts = [_label_name(value)]
                rows.append([p for p in parts if p != ""])
            else:
                if _is_list(value):
                    raise LightbertError(f"{source}: row {row + 1} has several labels", "use --data.task multi_label")
                rows.append([_label_name(value)])
        return rows

    def encode(self, labels: Sequence[Any], source: str) -> torch.Tensor:
        """Targets for ``labels``; raises if a label is unknown or a regression target is not a finite number."""
        if self.task == "regression":
            values = []
            for row, value in enumerate(labels):
                number = _as_number(value)
                if number is None or not math.isfinite(number):
                    raise LightbertError(
                        f"{source}: row {row + 1} has regression target {value!r}, not a finite number",
                        "fix or remove the row",
                    )
                values.append(number)
            return torch.tensor(values, dtype=torch.float32)
        rows = self._split(labels, source)
        self.check_known({name for row in rows for name in row}, source)
        index = {name: i for i, name in enumerate(self.names or [])}
        if self.task == "single_label":
            return torch.tensor([index[row[0]] for row in rows], dtype=torch.long)
        targets = torch.zeros(len(rows), len(index), dtype=torch.float32)
        for i, row in enumerate(rows):
            for name in row:
                targets[i, index[name]] = 1.0
        return targets


# ---------------------------------------------------------------------------------------------------------------
# Tokenized data, sampling and batching


def tokenize(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int) -> dict[str, list[list[int]]]:
    """Token ids without padding (pairs as pairs, ``longest_first`` truncation); the collator pads per batch."""
    encoded = tokenizer(
        list(texts),
        text_pair=list(pairs) if pairs is not None else None,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    return {k: v for k, v in encoded.items() if k in ("input_ids", "token_type_ids")}


class TokenizedDataset(Dataset):
    """Token ids (and optional targets) per row; items carry their row index so the order can be traced."""

    def __init__(self, features: dict[str, list[list[int]]], targets: torch.Tensor | None = None) -> None:
        self.features = features
        self.targets = targets
        self.lengths = [len(ids) for ids in features["input_ids"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[index] for k, v in self.features.items()}
        item["index"] = index
        if self.targets is not None:
            item["labels"] = self.targets[index]
        return item


class PaddingCollator:
    """Pads a batch to its longest member (never to max_length). Module-level and picklable for worker processes."""

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        batch: dict[str, torch.Tensor] = {}
        input_ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        token_type_ids = torch.zeros((len(items), longest), dtype=torch.long) if "token_type_ids" in items[0] else None
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            span = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            input_ids[row, span] = torch.tensor(item["input_ids"], dtype=torch.long)
            attention_mask[row, span] = 1
            if token_type_ids is not None:
                token_type_ids[row, span] = torch.tensor(item["token_type_ids"], dtype=torch.long)
        batch["input_ids"] = input_ids
        batch["attention_mask"] = attention_mask
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        if "labels" in items[0]:
            batch["labels"] = torch.stack([item["labels"] for item in items])
        return batch


class LengthGroupedSampler(Sampler[int]):
    """A seeded shuffle that keeps texts of similar length in the same batch, and can resume mid-epoch.

    Each epoch (seed + epoch) draws a permutation, cuts it into mega-batches of ``group_size`` batches, sorts each
    by length and cuts it into batches, then shuffles the order of the full batches (a short remainder goes last)
    and moves the batch with the longest text to the front, as the Trainer's ``group_by_length`` does: a batch too
    big for the memory fails at the first step, not hours in, and the allocator meets its largest batch first, so
    later batches reuse that memory instead of growing the heap around smaller blocks.
    Consecutive runs of ``batch_size`` indices are exactly those batches, so a plain ``BatchSampler`` on top
    reproduces them. ``resume(epoch, samples_done)`` makes the next pass over that epoch skip what was trained.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_size: int = 50) -> None:
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.group_size = group_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, samples_done: int) -> None:
        self._resume = (epoch, samples_done)

    def order(self, epoch: int) -> list[int]:
        """The full order of sample indices for ``epoch``."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        permutation = torch.randperm(len(self.lengths), generator=generator)
        mega = self.batch_size * self.group_size
        full_batches, remainder = [], []
        for start in range(0, len(permutation), mega):
            group = permutation[start : start + mega]
            group = group[torch.argsort(self.lengths[group], descending=True, stable=True)]
            for b in range(0, len(group), self.batch_size):
                batch = group[b : b + self.batch_size]
                (full_batches if len(batch) == self.batch_size else remainder).append(batch)
        shuffled = torch.randperm(len(full_batches), generator=generator).tolist()
        batches = [full_batches[i] for i in shuffled]
        if batches:
            longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i][0]]))  # sorted: [0] is the longest
            batches[0], batches[longest] = batches[longest], batches[0]
        batches += remainder
        return torch.cat(batches).tolist() if batches else []

    def __iter__(self) -> Iterator[int]:
        # A generator: the epoch is read at the first draw, after Lightning has called set_epoch.
        order = self.order(self.epoch)
        if self._resume is not None:
            epoch, samples_done = self._resume
            self._resume = None
            if epoch == self.epoch:
                order = order[samples_done:]
        yield from order

    def __len__(self) -> int:
        # The full epoch, also when resuming: Lightning counts the batches already done itself.
        return len(self.lengths)


class SortedSampler(Sampler[int]):
    """Evaluation order: longest first, so batches hold similar lengths and pad little. Metrics ignore order."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
