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


def counted(names: list[str], shown: int = 10) -> str:
    """Label names for a message, counted: ``2 labels: neg, pos``; a long list as its first and last names
    (``50 labels: LABEL_0, …, LABEL_49``)."""
    names = [str(name) for name in names]
    listed = names if len(names) <= shown else [*names[: shown - 2], "…", names[-1]]
    return f"{len(names)} label{'s' if len(names) != 1 else ''}: {', '.join(listed)}"


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
                f"{source} has labels the model does not know: {counted(unknown)} (known: {counted(known)})",
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


ClassWeights = Literal["balanced"] | list[float] | dict[str, float]


def class_weights(spec: ClassWeights, task: str, labels: list[str], targets: torch.Tensor | None) -> list[float]:
    """The loss weight of each label, in label order, from ``spec``: ``balanced`` or one weight per label (a list in
    label order, or a mapping by label name; labels it leaves out weigh 1).

    Single-label: class weights of the cross-entropy; balanced is ``n / (k * count)``, as scikit-learn's
    ``compute_class_weight``. Multi-label: the positive weight of each label's binary cross-entropy; balanced is
    ``negatives / positives``, so that a label's positive rows weigh as much as its negative rows."""
    if task == "regression":
        raise LightbertError("class weights weigh labels, and a regression has none", "leave --model.class_weights out")
    if spec == "balanced":
        if targets is None:
            raise LightbertError("balanced class weights are counted on the training data", "give --data.train FILE")
        if task == "single_label":
            counts = torch.bincount(targets, minlength=len(labels)).double()
            weights = len(targets) / (len(labels) * counts)
            empty = [name for name, count in zip(labels, counts.tolist(), strict=True) if count == 0]
        else:
            positives = targets.double().sum(dim=0)
            weights = (len(targets) - positives) / positives
            empty = [name for name, count in zip(labels, positives.tolist(), strict=True) if count == 0]
        if empty:
            raise LightbertError(
                f"balanced class weights need training rows of every label, and {', '.join(empty)} has none",
                "give the weights: --model.class_weights '{label: weight, ...}'",
            )
        return [float(w) for w in weights.tolist()]
    if isinstance(spec, str):
        raise LightbertError(f"unknown class weights {spec!r}", "pass balanced, a list or a mapping by label name")
    if isinstance(spec, dict):
        unknown = [str(name) for name in spec if str(name) not in labels]
        if unknown:
            raise LightbertError(
                f"class weights for unknown label(s) {counted(unknown)}", f"the labels: {counted(labels)}"
            )
        named = {str(name): weight for name, weight in spec.items()}
        given = [named.get(name, 1.0) for name in labels]
    else:
        given = list(spec)
        if len(given) != len(labels):
            raise LightbertError(
                f"{len(given)} class weights for {len(labels)} labels ({', '.join(labels)})",
                "give one weight per label, in this order, or a mapping by label name",
            )
    for name, weight in zip(labels, given, strict=True):
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
            raise LightbertError(
                f"the class weight of {name} is {weight}, not a positive number", "give weights above 0"
            )
    return [float(w) for w in given]


def describe_class_weights(task: str, labels: list[str], weights: list[float]) -> str:
    """One line for the start of ``fit`` and the model card."""
    kind = "positive weights of the labels" if task == "multi_label" else "class weights"
    return f"{kind}: " + ", ".join(f"{name} {weight:.4g}" for name, weight in zip(labels, weights, strict=True))


THRESHOLD_STEPS = 1000  # multi-label thresholds are picked to 1/1000


def score_steps(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each probability's step of 1/``THRESHOLD_STEPS`` (floor), for histograms of scores."""
    values = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    return np.floor(values * THRESHOLD_STEPS).astype(np.int64).clip(0, THRESHOLD_STEPS)


def best_f1_thresholds(positive_counts: np.ndarray, negative_counts: np.ndarray) -> list[tuple[float, float]]:
    """Per label, the threshold (a multiple of 1/1000) whose F1 is highest, and that F1, from histograms of the
    scores of its positive and negative rows (``[labels, THRESHOLD_STEPS + 1]``, see ``score_steps``). The lowest
    threshold wins among equals; a label without positive rows keeps 0.5 (F1 is 0 whatever the threshold)."""
    best = []
    for positives_at, negatives_at in zip(positive_counts, negative_counts, strict=True):
        # Predicted positive at threshold k/1000: the scores in steps k and above.
        tp = positives_at[::-1].cumsum()[::-1]
        fp = negatives_at[::-1].cumsum()[::-1]
        f1 = np.where(tp > 0, 2 * tp / np.maximum(positives_at.sum() + tp + fp, 1), 0.0)
        step = int(np.argmax(f1))
        best.append((step / THRESHOLD_STEPS if f1[step] > 0 else 0.5, float(f1[step])))
    return best
