"""The figures and the readable page of an evaluation report: matplotlib (Agg: no display needed) and Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MARKDOWN_TABLE_LABELS = 20  # a confusion matrix wider than this is a figure only


def draw(report: Any, directory: Path) -> dict[str, str]:
    """Draw the report's figures into ``directory``; returns what each shows -> its file name."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figures: dict[str, str] = {}
    with plt.rc_context({"font.size": 9}):
        if report.task == "single_label":
            figures["confusion matrix"] = _confusion(report, directory / "confusion_matrix.png", plt)
            figures["reliability diagram"] = _reliability(report, directory / "reliability.png", plt)
            figures["F1 per class"] = _f1_bars(report.details["per_class"], directory / "f1_per_class.png", plt)
        elif report.task == "multi_label":
            figures["F1 per label"] = _f1_bars(report.details["per_label"], directory / "f1_per_label.png", plt)
        else:
            predicted, gold = report.details["_columns"]
            figures["predicted against gold"] = _scatter(predicted, gold, directory / "predicted_vs_gold.png", plt)
            figures["residuals"] = _residuals(predicted - gold, directory / "residuals.png", plt)
    return figures


def _save(figure: Any, path: Path, plt: Any) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def _confusion(report: Any, path: Path, plt: Any) -> str:
    labels = report.details["confusion_matrix"]["labels"]
    counts = np.array(report.details["confusion_matrix"]["counts"], dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(labels)
    side = min(22.0, max(4.5, 0.35 * k + 2.5))  # readable for 2 to 50 labels
    figure, axes = plt.subplots(1, 2, figsize=(2 * side, side))
    for ax, values, title, fmt in (
        (axes[0], counts, "counts", ".0f"),
        (axes[1], normalised, "share of each gold row", ".2f"),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_title(f"Confusion matrix ({title})")
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_xticks(range(k), labels, rotation=90 if k > 6 else 0, fontsize=max(5, 9 - k // 10))
        ax.set_yticks(range(k), labels, fontsize=max(5, 9 - k // 10))
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if k <= 15:
            high = values.max() / 2 if values.max() else 1
            for (i, j), value in np.ndenumerate(values):
                color = "white" if value > high else "black"
                ax.text(j, i, format(value, fmt), ha="center", va="center", color=color, fontsize=8)
    return _save(figure, path, plt)


def _reliability(report: Any, path: Path, plt: Any) -> str:
    bins = report.details["calibration"]["reliability"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    width = 1 / len(bins)
    accuracy = [b["accuracy"] if b["count"] else 0 for b in bins]
    top.bar(centers, accuracy, width=width * 0.9, color="#4c72b0", label="accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfectly calibrated")
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability diagram (ECE {report.details['calibration']['ece']:.3f})")
    top.legend(loc="upper left")
    bottom.bar(centers, [b["count"] for b in bins], width=width * 0.9, color="#999999")
    bottom.set_xlabel("confidence (probability of the predicted label)")
    bottom.set_ylabel("texts")
    bottom.set_xlim(0, 1)
    return _save(figure, path, plt)


def _f1_bars(per_class: dict[str, dict[str, float]], path: Path, plt: Any) -> str:
    names = list(per_class)
    figure, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(names) + 1)))
    ax.barh(range(len(names)), [per_class[n]["f1"] for n in names], color="#55a868")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title("F1 per " + ("label" if "threshold" in next(iter(per_class.values()), {}) else "class"))
    return _save(figure, path, plt)


def _scatter(predicted: np.ndarray, gold: np.ndarray, path: Path, plt: Any) -> str:
    shown = np.random.default_rng(0).permutation(len(gold))[:5000]  # a sample: a million dots draw no better
    figure, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(gold[shown], predicted[shown], s=6, alpha=0.4, color="#4c72b0")
    low, high = float(min(gold.min(), predicted.min())), float(max(gold.max(), predicted.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="gray")
    ax.set_xlabel("gold")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted against gold")
    return _save(figure, path, plt)


def _residuals(residuals: np.ndarray, path: Path, plt: Any) -> str:
    figure, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.hist(residuals, bins=40, color="#c44e52")
    ax.axvline(0, color="gray", linestyle="--")
    ax.set_xlabel("predicted - gold")
    ax.set_ylabel("texts")
    ax.set_title("Residuals")
    return _save(figure, path, plt)


# -- the readable page -------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def markdown(report: Any, figures: dict[str, str]) -> str:
    """``report.md``: the report as a page, its figures embedded by relative path."""
    model, data, details = report.model, report.data, report.details
    lines = [
        f"# Evaluation of {Path(str(model.get('path', 'the model'))).name}",
        "",
        f"Model `{model.get('path')}` ({model.get('kind')}, {model.get('precision')}) on `{data.get('path')}`:"
        f" {report.rows} rows, {report.task.replace('_', '-')}.",
        "",
        *_table(["metric", "value"], [[name, value] for name, value in report.metrics.items()]),
        "",
    ]
    if report.task == "single_label":
        per_class = details["per_class"]
        rows = [[name, c["precision"], c["recall"], c["f1"], c["support"]] for name, c in per_class.items()]
        for average in ("macro_avg", "weighted_avg"):
            a = details[average]
            rows.append([average.replace("_", " "), a["precision"], a["recall"], a["f1"], a["support"]])
        lines += ["## Per class", "", *_table(["class", "precision", "recall", "F1", "support"], rows), ""]
        labels = details["confusion_matrix"]["labels"]
        lines += ["## Confusion matrix", "", "Rows: gold labels; columns: predicted.", ""]
        if len(labels) <= MARKDOWN_TABLE_LABELS:
            counts = details["confusion_matrix"]["counts"]
            lines += [
                *_table(["gold \\ predicted", *labels], [[g, *row] for g, row in zip(labels, counts, strict=True)]),
                "",
            ]
        lines += [f"![confusion matrix]({figures['confusion matrix']})", ""]
        ece, bins = details["calibration"]["ece"], details["calibration"]["bins"]
        lines += ["## Calibration", "", f"Expected calibration error ({bins} bins): {ece:.4f}.", ""]
        lines += [f"![reliability diagram]({figures['reliability diagram']})", ""]
        lines += [f"![F1 per class]({figures['F1 per class']})", ""]
        errors = [[e["text"], e["gold"], e["predicted"], e["probability"]] for e in details["worst_errors"]]
        lines += [
            "## Most confident wrong predictions",
            "",
            *_table(["text", "gold", "predicted", "probability"], errors),
        ]
    elif report.task == "multi_label":
        per_label = details["per_label"]
        best = details["best_thresholds"]
        rows = [
            [n, c["precision"], c["recall"], c["f1"], c["support"], c["threshold"], best[n]["threshold"], best[n]["f1"]]
            for n, c in per_label.items()
        ]
        header = ["label", "precision", "recall", "F1", "support", "threshold", "best threshold", "F1 there"]
        lines += ["## Per label", "", *_table(header, rows), ""]
        lines += [
            "The best thresholds are what would maximise each label's F1 on this data: reported, not applied.",
            "",
        ]
        lines += [f"![F1 per label]({figures['F1 per label']})"]
    else:
        errors = [[e["text"], e["gold"], e["predicted"], e["error"]] for e in details["worst_errors"]]
        lines += [f"![predicted against gold]({figures['predicted against gold']})", "",
                  f"![residuals]({figures['residuals']})", "", "## Largest errors", "",
                  *_table(["text", "gold", "predicted", "error"], errors)]  # fmt: skip
    return "\n".join(lines) + "\n"
