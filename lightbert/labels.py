"""Tasks and labels: which task the labels describe, the label names in output order, and training targets.

Three tasks: ``single_label`` (one class per text), ``multi_label`` (any number of classes per text) and
``regression`` (one number per text). Label names are strings; ``labels`` always means the list of label names in
the order of the model's outputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch

from lightbert.errors import LightbertError
from lightbert.tables import is_missing

Task = Literal["single_label", "multi_label", "regression"]
TASKS: tuple[str, ...] = get_args(Task)


def check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise LightbertError(f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")


def _is_missing_label(value: Any) -> bool:
    return is_missing(value) or (isinstance(value, str) and not value.strip())


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


def label_name(value: Any) -> str:
    """A raw label as a label name: whole numbers without a decimal point (``1.0`` -> ``1``), strings stripped."""
    number = _as_number(value)
    if number is not None and number.is_integer():
        return str(int(number))
    return str(value).strip()


def _is_integer_name(name: str) -> bool:
    return re.fullmatch(r"-?\d+", name) is not None


def sort_labels(names: set[str]) -> list[str]:
    """Integers in numeric order (2 before 10), other names alphabetically: stable across runs and machines."""
    if all(_is_integer_name(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def infer_task(labels: Sequence[Any], delimiter: str | None = None) -> Task:
    """single_label, multi_label or regression, from the labels themselves.

    Lists (JSONL/Parquet) or delimited strings mean multi-label; numbers that are not all whole (or are written
    with a decimal point, like STS-B's 3.800) mean regression; anything else is single-label.
    """
    present = [v for v in labels if not _is_missing_label(v)]
    if any(_is_list(v) for v in present):
        return "multi_label"
    if delimiter and any(isinstance(v, str) and delimiter in v for v in present):
        return "multi_label"
    numbers = [_as_number(v) for v in present]
    if present and all(n is not None for n in numbers):
        written_as_float = any(isinstance(v, float) or (isinstance(v, str) and re.search(r"[.eE]", v)) for v in present)
        if written_as_float or not all(n is not None and n.is_integer() for n in numbers):
            return "regression"
    return "single_label"


class LabelEncoder:
    """Turns raw labels into training targets for one task, with the label names in a fixed order.

    Single-label targets are class ids (int64), multi-label targets multi-hot float vectors, regression targets
    floats. ``labels`` are the label names in output order (None for regression).
    """

    def __init__(
        self, task: str, labels: list[str] | None = None, delimiter: str | None = None, accept_ids: bool = False
    ) -> None:
        check_task(task)
        self.task = task
        self.labels = list(labels) if labels is not None and task != "regression" else None
        self.delimiter = delimiter
        self.accept_ids = accept_ids  # a label that is no name but a whole number below the label count: that id

    @classmethod
    def fit(
        cls,
        raw: Sequence[Any],
        task: str | None = None,
        labels: list[str] | None = None,
        delimiter: str | None = None,
        source: str = "training data",
    ) -> LabelEncoder:
        """The encoder for ``raw`` labels: the task inferred unless given, the label names found (sorted) unless
        given, in which case every label found must be one of them."""
        encoder = cls(task or infer_task(raw, delimiter), labels, delimiter)
        if encoder.task == "regression":
            return encoder
        found = {name for row in encoder._split(raw, source) for name in row}
        if encoder.labels is None:
            if encoder.task == "single_label" and len({_is_integer_name(n) for n in found}) > 1:
                raise LightbertError(
                    f"{source} mixes numeric and text labels: {', '.join(sorted(found)[:8])}",
                    "use one kind of label, or pass --data.labels with the label names",
                )
            encoder.labels = sort_labels(found)
        else:
            encoder.check_known(found, source)
        if encoder.task == "single_label" and len(encoder.labels) < 2:
            raise LightbertError(
                f"{source} has only one label ({', '.join(encoder.labels)})", "classification needs at least two labels"
            )
        return encoder

    def check_known(self, found: set[str], source: str) -> None:
        known = self.labels or []
        unknown = sorted(found - set(known))
        if unknown:
            raise LightbertError(
                f"{source} has labels the model does not know: {', '.join(unknown[:10])}"
                f" (known: {', '.join(known[:10])})",
                "fix the labels, or train with data that has them",
            )

    def _name_of(self, name: str) -> str:
        labels = self.labels or []
        if name not in labels and _is_integer_name(name) and 0 <= int(name) < len(labels):
            return labels[int(name)]
        return name

    def _split(self, raw: Sequence[Any], source: str, first_row: int = 1) -> list[list[str]]:
        rows: list[list[str]] = []
        for row, value in enumerate(raw, first_row - 1):
            if self.task == "multi_label" and isinstance(value, str) and not value.strip():
                rows.append([])  # no label applies
                continue
            if _is_missing_label(value):
                raise LightbertError(f"{source}: row {row + 1} has no label", "fill in the label or remove the row")
            if self.task == "multi_label":
                if _is_list(value):
                    parts = [label_name(v) for v in value]
                elif isinstance(value, str):
                    parts = [p.strip() for p in value.split(self.delimiter or ",")]
                else:
                    parts = [label_name(value)]
                rows.append([p for p in parts if p != ""])
            else:
                if _is_list(value):
                    raise LightbertError(f"{source}: row {row + 1} has several labels", "use --data.task multi_label")
                rows.append([label_name(value)])
        return rows

    def encode(self, raw: Sequence[Any], source: str, first_row: int = 1) -> torch.Tensor:
        """Targets for ``raw`` labels (row ``first_row`` of the file first); raises if a label is unknown or a
        regression target is not a finite number."""
        if self.task == "regression":
            values = []
            for row, value in enumerate(raw, first_row - 1):
                number = _as_number(value)
                if number is None or not math.isfinite(number):
                    raise LightbertError(
                        f"{source}: row {row + 1} has regression target {value!r}, not a finite number",
                        "fix or remove the row",
                    )
                values.append(number)
            return torch.tensor(values, dtype=torch.float32)
        rows = self._split(raw, source, first_row)
        if self.accept_ids:
            rows = [[self._name_of(name) for name in row] for row in rows]
        self.check_known({name for row in rows for name in row}, source)
        index = {name: i for i, name in enumerate(self.labels or [])}
        if self.task == "single_label":
            return torch.tensor([index[row[0]] for row in rows], dtype=torch.long)
        targets = torch.zeros(len(rows), len(index), dtype=torch.float32)
        for i, names in enumerate(rows):
            for name in names:
                targets[i, index[name]] = 1.0
        return targets
