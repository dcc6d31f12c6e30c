"""``lightbert evaluate``: how good a model is on labelled data, and where it fails.

Predictions are tallied chunk by chunk, so memory stays flat as the file grows: confusion counts, log-loss and
calibration bins (single-label); per-label counts and score histograms (multi-label); running sums and the two
columns of numbers (regression, for Spearman's rank correlation and the plots); and the worst errors in a small heap.
``Report`` holds the result; ``write_report`` writes ``report.json`` (the source of truth), ``report.md`` and PNG
figures into a directory, atomically.
"""

from __future__ import annotations

import heapq
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightbert.classifier import Classifier
from lightbert.errors import LightbertError
from lightbert.labels import THRESHOLD_STEPS, LabelEncoder, best_f1_thresholds, score_steps
from lightbert.safety import staged_directory
from lightbert.tables import Column, columns_for_model, iter_tables, select_columns

CALIBRATION_BINS = 15
TEXT_SHOWN = 300  # characters of a text in the worst errors


@dataclass
class Report:
    """What ``evaluate`` found. ``metrics`` are the headline numbers (those a model card shows); ``details`` the rest
    (per class, confusion matrix, calibration, worst errors, ...); ``to_dict`` is ``report.json``."""

    task: str
    labels: list[str] | None
    rows: int
    metrics: dict[str, float]
    details: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "rows": self.rows,
            "task": self.task,
            "labels": self.labels,
            "metrics": self.metrics,
            **self.details,
        }

    def summary(self) -> str:
        """One line: ``evaluation: 872 rows, accuracy 0.8601, f1_macro 0.8576, ...``."""
        numbers = ", ".join(f"{name} {value:.4f}" for name, value in self.metrics.items())
        return f"evaluation: {self.rows} rows, {numbers}"


# -- tallies -----------------------------------------------------------------------------------------------------------


class _WorstErrors:
    """The ``size`` entries with the largest keys seen so far."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.heap: list[tuple[float, int, dict[str, Any]]] = []
        self.count = 0

    def offer(self, key: float, entry: dict[str, Any]) -> None:
        self.count += 1
        item = (key, -self.count, entry)  # earlier rows first among equals
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, item)
        elif self.size and item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def ordered(self) -> list[dict[str, Any]]:
        return [entry for _, _, entry in sorted(self.heap, key=lambda item: (-item[0], -item[1]))]


def _shown(text: str, pair: str | None) -> dict[str, Any]:
    shown = {"text": text[:TEXT_SHOWN] + ("…" if len(text) > TEXT_SHOWN else "")}
    if pair is not None:
        shown["text_pair"] = pair[:TEXT_SHOWN] + ("…" if len(pair) > TEXT_SHOWN else "")
    return shown


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


class SingleLabelTally:
    """Confusion counts, log-loss, calibration bins and the most confident wrong predictions."""

    def __init__(self, labels: list[str], top: int) -> None:
        self.labels = labels
        self.confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)  # rows: gold, columns: predicted
        self.log_loss = 0.0
        self.bin_count = np.zeros(CALIBRATION_BINS, dtype=np.int64)
        self.bin_confidence = np.zeros(CALIBRATION_BINS)
        self.bin_correct = np.zeros(CALIBRATION_BINS)
        self.worst = _WorstErrors(top)

    def add(self, probs: np.ndarray, gold: np.ndarray, texts: Sequence[str], pairs: Sequence[str] | None) -> None:
        predicted = probs.argmax(axis=1)
        np.add.at(self.confusion, (gold, predicted), 1)
        true_probs = probs[np.arange(len(gold)), gold]
        self.log_loss += float(-np.log(np.clip(true_probs, np.finfo(np.float64).eps, None)).sum())
        confidence = probs.max(axis=1)
        bins = np.minimum((confidence * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
        np.add.at(self.bin_count, bins, 1)
        np.add.at(self.bin_confidence, bins, confidence)
        np.add.at(self.bin_correct, bins, (predicted == gold).astype(np.float64))
        for i in np.flatnonzero(predicted != gold).tolist():
            entry = {
                **_shown(texts[i], pairs[i] if pairs is not None else None),
                "gold": self.labels[gold[i]],
                "predicted": self.labels[predicted[i]],
                "probability": float(confidence[i]),
            }
            self.worst.offer(float(confidence[i]), entry)

    def result(self) -> tuple[dict[str, float], dict[str, Any]]:
        total = int(self.confusion.sum())
        support = self.confusion.sum(axis=1)
        predicted = self.confusion.sum(axis=0)
        correct = np.diag(self.confusion)
        per_class = {}
        for i, name in enumerate(self.labels):
            precision, recall = _ratio(correct[i], predicted[i]), _ratio(correct[i], support[i])
            per_class[name] = {
                "precision": precision,
                "recall": recall,
                "f1": _f1(precision, recall),
                "support": int(support[i]),
            }
        averages = {}
        for average in ("macro", "weighted"):
            weights = np.ones(len(self.labels)) if average == "macro" else support.astype(np.float64)
            averages[average] = {
                key: _ratio(
                    sum(w * per_class[n][key] for w, n in zip(weights, self.labels, strict=True)), weights.sum()
                )
                for key in ("precision", "recall", "f1")
            } | {"support": total}
        ece = _ratio(sum(abs(self.bin_correct[b] - self.bin_confidence[b]) for b in range(CALIBRATION_BINS)), total)
        bins = [
            {
                "lower": b / CALIBRATION_BINS,
                "upper": (b + 1) / CALIBRATION_BINS,
                "count": int(self.bin_count[b]),
                "confidence": _ratio(self.bin_confidence[b], self.bin_count[b]),
                "accuracy": _ratio(self.bin_correct[b], self.bin_count[b]),
            }
            for b in range(CALIBRATION_BINS)
        ]
        metrics = {
            "accuracy": _ratio(correct.sum(), total),
            "f1_macro": averages["macro"]["f1"],
            "f1_weighted": averages["weighted"]["f1"],
            "log_loss": _ratio(self.log_loss, total),
            "ece": ece,
        }
        details = {
            "per_class": per_class,
            "macro_avg": averages["macro"],
            "weighted_avg": averages["weighted"],
            "confusion_matrix": {"labels": self.labels, "counts": self.confusion.tolist()},
            "calibration": {"bins": CALIBRATION_BINS, "ece": ece, "reliability": bins},
            "worst_errors": self.worst.ordered(),
        }
        return metrics, details


class MultiLabelTally:
    """Per-label counts at the threshold, exact-match rows, and score histograms for the best threshold."""

    def __init__(self, labels: list[str], thresholds: np.ndarray) -> None:
        self.labels = labels
        self.thresholds = thresholds
        self.tp = np.zeros(len(labels), dtype=np.int64)
        self.fp = np.zeros(len(labels), dtype=np.int64)
        self.fn = np.zeros(len(labels), dtype=np.int64)
        self.exact = 0
        self.rows = 0
        self.positive_scores = np.zeros((len(labels), THRESHOLD_STEPS + 1), dtype=np.int64)
        self.negative_scores = np.zeros((len(labels), THRESHOLD_STEPS + 1), dtype=np.int64)

    def add(self, probs: np.ndarray, gold: np.ndarray, texts: Sequence[str], pairs: Sequence[str] | None) -> None:
        truth = gold.astype(bool)
        predicted = probs >= self.thresholds
        self.tp += (predicted & truth).sum(axis=0)
        self.fp += (predicted & ~truth).sum(axis=0)
        self.fn += (~predicted & truth).sum(axis=0)
        self.exact += int((predicted == truth).all(axis=1).sum())
        self.rows += len(probs)
        steps = score_steps(probs)
        for label in range(len(self.labels)):
            np.add.at(self.positive_scores[label], steps[truth[:, label], label], 1)
            np.add.at(self.negative_scores[label], steps[~truth[:, label], label], 1)

    def best_thresholds(self) -> dict[str, dict[str, float]]:
        """Per label, the threshold (a multiple of 1/1000) whose F1 on this data is highest, and that F1."""
        best = best_f1_thresholds(self.positive_scores, self.negative_scores)
        return {name: {"threshold": t, "f1": f1} for name, (t, f1) in zip(self.labels, best, strict=True)}

    def result(self) -> tuple[dict[str, float], dict[str, Any]]:
        per_label = {}
        for i, name in enumerate(self.labels):
            precision = _ratio(self.tp[i], self.tp[i] + self.fp[i])
            recall = _ratio(self.tp[i], self.tp[i] + self.fn[i])
            per_label[name] = {
                "precision": precision,
                "recall": recall,
                "f1": _f1(precision, recall),
                "support": int(self.tp[i] + self.fn[i]),
                "threshold": float(self.thresholds[i]),
            }
        tp, fp, fn = int(self.tp.sum()), int(self.fp.sum()), int(self.fn.sum())
        micro_precision, micro_recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        micro = {"precision": micro_precision, "recall": micro_recall, "f1": _f1(micro_precision, micro_recall)}
        macro = {key: float(np.mean([per_label[n][key] for n in self.labels])) for key in ("precision", "recall", "f1")}
        metrics = {
            "f1_micro": micro["f1"],
            "f1_macro": macro["f1"],
            "subset_accuracy": _ratio(self.exact, self.rows),
        }
        details = {
            "per_label": per_label,
            "micro_avg": micro,
            "macro_avg": macro,
            "best_thresholds": self.best_thresholds(),
        }
        return metrics, details


class RegressionTally:
    """Errors and correlations; the predictions and targets themselves are kept as two columns of numbers."""

    def __init__(self, top: int) -> None:
        self.predicted: list[np.ndarray] = []
        self.gold: list[np.ndarray] = []
        self.worst = _WorstErrors(top)

    def add(self, scores: np.ndarray, gold: np.ndarray, texts: Sequence[str], pairs: Sequence[str] | None) -> None:
        self.predicted.append(scores.astype(np.float64))
        self.gold.append(gold.astype(np.float64))
        for i, error in enumerate(np.abs(scores - gold)):
            entry = {**_shown(texts[i], pairs[i] if pairs is not None else None), "gold": float(gold[i])}
            self.worst.offer(float(error), entry | {"predicted": float(scores[i]), "error": float(error)})

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.predicted:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self.predicted), np.concatenate(self.gold)

    def result(self) -> tuple[dict[str, float], dict[str, Any]]:
        predicted, gold = self.columns()
        errors = predicted - gold
        metrics = {
            "mse": float(np.mean(errors**2)) if len(errors) else 0.0,
            "mae": float(np.mean(np.abs(errors))) if len(errors) else 0.0,
            "pearson": _correlation(predicted, gold),
            "spearman": _correlation(_ranks(predicted), _ranks(gold)),
        }
        return metrics, {"worst_errors": self.worst.ordered()}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (as Spearman's coefficient needs)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# -- evaluating --------------------------------------------------------------------------------------------------------

Chunk = tuple[list[str], list[str] | None, list[Any]]


def _thresholds(classifier: Classifier, threshold: float | None) -> np.ndarray:
    labels = classifier.labels or []
    stored = getattr(classifier, "thresholds", None)
    if threshold is None and stored:
        return np.array([stored[name] for name in labels], dtype=np.float64)
    return np.full(len(labels), 0.5 if threshold is None else threshold)


def evaluate_records(
    classifier: Classifier,
    chunks: Iterable[tuple[Chunk, list[dict[str, Any]]]],
    source: str,
    threshold: float | None = None,
    top_errors: int = 10,
    label_delimiter: str | None = None,
) -> Report:
    """A report from prediction records and the rows they were made for, chunk by chunk (see ``evaluate_file``)."""
    labels = classifier.labels
    encoder = LabelEncoder(classifier.task, labels, label_delimiter, accept_ids=True)
    tally: SingleLabelTally | MultiLabelTally | RegressionTally
    if classifier.task == "single_label":
        tally = SingleLabelTally(labels or [], top_errors)
    elif classifier.task == "multi_label":
        tally = MultiLabelTally(labels or [], _thresholds(classifier, threshold))
    else:
        tally = RegressionTally(top_errors)
    rows = 0
    for (texts, pairs, raw), records in chunks:
        gold = encoder.encode(raw, source, first_row=rows + 1).numpy()
        if classifier.task == "regression":
            values = np.array([record["score"] for record in records], dtype=np.float64)
        else:
            values = np.array([[record["probs"][name] for name in labels or []] for record in records])
        tally.add(values, gold, texts, pairs)
        rows += len(texts)
    if rows == 0:
        raise LightbertError(f"{source} has no rows to evaluate", "give a file with labelled rows")
    metrics, details = tally.result()
    if isinstance(tally, RegressionTally):
        details["_columns"] = tally.columns()  # for the plots; not written to report.json
    return Report(classifier.task, labels, rows, metrics, details)


def columns_for_evaluation(
    classifier: Classifier,
    path: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    label_column: Column = None,
    label_delimiter: str | None = None,
    header: bool | None = None,
) -> tuple[tuple[Column, Column, Column, str | None, bool | None], str | None]:
    """The text, pair and label columns, the label delimiter and the header to read the labelled file ``path``
    with for ``classifier``: each one given, else its training data's (the columns where the file has them,
    ``tables.columns_for_model``); and a line saying which columns were not given (None: all were, or defaults)."""
    data = classifier.info.data
    given = (text_column, text_pair_column, label_column)
    (text, pair, label), said = columns_for_model(path, *given, data, classifier.paired, True, header)
    recorded = data.get("label_delimiter")
    delimiter = label_delimiter or (recorded if isinstance(recorded, str) and recorded else None)
    return (text, pair, label, delimiter, header), said


def labelled_chunks(
    path: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    label_column: Column = None,
    paired: bool = False,
    header: bool | None = None,
    chunk_size: int = 4096,
) -> Iterator[Chunk]:
    """Texts, second texts and raw labels of a labelled file, ``chunk_size`` rows at a time."""
    if paired and text_pair_column is None:
        raise LightbertError(
            "this model was trained on text pairs", "pass --text_pair_column with the column of the second text"
        )
    first_row = 1
    expected = [text_column, text_pair_column, label_column]
    for table in iter_tables(path, header, expected, chunk_size=chunk_size):
        texts, pairs, raw = select_columns(
            table, path, text_column, text_pair_column, label_column, True, False, first_row, option="--"
        )
        first_row += len(texts)
        yield texts, pairs, raw or []


def evaluate_file(
    classifier: Classifier,
    path: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    label_column: Column = None,
    label_delimiter: str | None = None,
    header: bool | None = None,
    batch_size: int = 64,
    threshold: float | None = None,
    top_errors: int = 10,
    progress: Any = None,
) -> Report:
    """Evaluate ``classifier`` on a labelled file (any format ``fit`` reads), streaming it chunk by chunk."""
    chunks = labelled_chunks(path, text_column, text_pair_column, label_column, classifier.paired, header)

    def predicted() -> Iterator[tuple[Chunk, list[dict[str, Any]]]]:
        for chunk in chunks:
            texts, pairs, _ = chunk
            records = classifier.predict(texts, pairs, batch_size=batch_size, threshold=threshold)
            if progress is not None:
                progress.update(len(texts))
            yield chunk, records

    report = evaluate_records(classifier, predicted(), str(path), threshold, top_errors, label_delimiter)
    return _about_file(report, classifier, path, text_column, label_column)


def evaluate_predictions(
    classifier: Classifier,
    path: str | Path,
    predictions: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    label_column: Column = None,
    label_delimiter: str | None = None,
    header: bool | None = None,
    threshold: float | None = None,
    top_errors: int = 10,
) -> Report:
    """Evaluate the prediction records in ``predictions`` (JSON Lines, in the order of ``path``, as
    ``lightbert predict`` writes them) against the labels of ``path``: a distributed evaluation predicts first."""
    chunks = labelled_chunks(path, text_column, text_pair_column, label_column, classifier.paired, header)

    def paired() -> Iterator[tuple[Chunk, list[dict[str, Any]]]]:
        with open(predictions, encoding="utf-8") as records:
            for chunk in chunks:
                yield chunk, [json.loads(records.readline()) for _ in chunk[0]]

    report = evaluate_records(classifier, paired(), str(path), threshold, top_errors, label_delimiter)
    return _about_file(report, classifier, path, text_column, label_column)


def _about_file(report: Report, classifier: Classifier, path: str | Path, text: Column, label: Column) -> Report:
    report.data = {"path": str(path), "text_column": text, "label_column": label}
    report.model = model_description(classifier)
    return report


def evaluate(
    classifier: Classifier,
    texts: Sequence[str],
    labels: Sequence[Any],
    pairs: Sequence[str] | None = None,
    batch_size: int = 64,
    threshold: float | None = None,
    top_errors: int = 10,
    label_delimiter: str | None = None,
) -> Report:
    """Evaluate ``classifier`` on ``texts`` with their gold ``labels`` (names or ids; lists or delimited strings for
    multi-label; numbers for regression)."""
    if len(texts) != len(labels) or (pairs is not None and len(pairs) != len(texts)):
        raise LightbertError("texts, labels (and pairs) must be as many", "give one label per text")
    texts, labels = list(texts), list(labels)
    pairs = list(pairs) if pairs is not None else None
    records = classifier.predict(texts, pairs, batch_size=batch_size, threshold=threshold)
    report = evaluate_records(
        classifier, [((texts, pairs, labels), records)], "the labels", threshold, top_errors, label_delimiter
    )
    report.model = model_description(classifier)
    return report


def model_description(classifier: Classifier) -> dict[str, Any]:
    info = classifier.info
    described: dict[str, Any] = {"path": info.path, "kind": info.kind, "precision": classifier.precision}
    described |= model_identity(info.path)
    return described


def model_identity(path: str | Path) -> dict[str, Any]:
    """Size and modification time of a model file (or a directory's weights), so a report can be matched to the
    model it describes later (``lightbert export`` looks for one)."""
    target = Path(path)
    if target.is_dir():
        target = next(
            (target / name for name in ("model.safetensors", "pytorch_model.bin") if (target / name).exists()), target
        )
    try:
        stat = target.stat()
    except OSError:
        return {}
    return {"resolved": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# -- writing -----------------------------------------------------------------------------------------------------------


def check_output_dir(out_dir: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> None:
    """A report may be written into ``out_dir``: a directory (or nothing yet), empty unless ``overwrite``, and
    holding none of ``inputs`` at any depth (the data, the model), which replacing it would delete (checked before
    any work starts)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LightbertError(f"{out} exists and is not a directory", "choose another --output_dir")
    if out.is_dir():
        for source in inputs:
            if source is not None and _inside(Path(source), out):
                raise LightbertError(
                    f"--output_dir {out} holds the input {source}; replacing the directory would delete it",
                    "choose another --output_dir",
                )
        if any(out.iterdir()) and not overwrite:
            raise LightbertError(
                f"output directory is not empty: {out}", "choose another --output_dir or pass --overwrite"
            )


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` (as given, or where its links lead) lies in ``directory`` (or where its links lead)."""
    places = {Path(os.path.abspath(directory)), directory.resolve()}
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        if any(candidate == place or place in candidate.parents for place in places):
            return True
    return False


def write_report(report: Report, out_dir: str | Path, overwrite: bool = False) -> Path:
    """``report.json``, ``report.md`` and the figures, written into ``out_dir`` atomically (a staged directory),
    never over a directory that holds the data or the model the report is about."""
    from lightbert import report_figures

    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite, [report.data.get("path"), report.model.get("path")])
    with staged_directory(out_dir, overwrite) as staging:
        figures = report_figures.draw(report, staging)
        data = report.to_dict()
        data.pop("_columns", None)
        data["figures"] = figures
        text = json.dumps(_clean(data), indent=2, ensure_ascii=False, allow_nan=False)
        (staging / "report.json").write_text(text + "\n", encoding="utf-8")
        (staging / "report.md").write_text(report_figures.markdown(report, figures), encoding="utf-8")
    return out_dir


def _clean(value: Any) -> Any:
    """Plain JSON: numpy numbers as Python's, NaN (an undefined correlation) as null."""
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_report(path: str | Path) -> dict[str, Any]:
    """A ``report.json`` written by ``write_report`` (``path``: the file or its directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LightbertError(f"cannot read the evaluation report {path} ({err})", "give a report.json") from None
    if not isinstance(data, dict) or "metrics" not in data:
        raise LightbertError(f"{path} is not an evaluation report", "give a report.json written by lightbert evaluate")
    return data
