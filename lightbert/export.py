"""Export a classifier to a complete Hugging Face directory that ``transformers.pipeline`` loads offline.

The directory is written next to its destination, checked by reloading it with transformers and comparing
logits with the source model, and only then renamed into place: a failed export leaves nothing behind and never
replaces what was there.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from lightbert import __version__
from lightbert.bundled import DEFAULT_BASE_NAME
from lightbert.classifier import Classifier
from lightbert.errors import LightbertError
from lightbert.evaluation import model_identity, read_report
from lightbert.hf import SAMPLE_TEXTS
from lightbert.labels import describe_class_weights
from lightbert.loader import load
from lightbert.safety import staged_directory

SAMPLE_PAIRS = ["a film", "the movie was long", "", "lawmakers voted", "texte", "fine"]


def _base_model_name(classifier: Classifier) -> str:
    info = classifier.info
    try:
        config = yaml.safe_load(info.training_config or "") or {}
    except yaml.YAMLError:
        config = {}
    base = ((config.get("model") or {}) if isinstance(config, dict) else {}).get("base")
    if base:
        return str(base)
    if info.kind == "recipe":
        return str(info.base)
    if info.kind == "lightbert":
        return DEFAULT_BASE_NAME
    return str(getattr(classifier.model.config, "_name_or_path", "") or "unknown")


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()!|~])")  # what opens emphasis, code, links, images, cells


def markdown_text(value: Any) -> str:
    """``value`` as literal Markdown text on one line: HTML escaped, Markdown's punctuation backslash-escaped, so a
    label or a file name from a checkpoint can neither add a link, a script, nor break a table."""
    text = " ".join(str(value).split())
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def markdown_code(value: Any) -> str:
    """``value`` as an inline code span on one line (fenced by more backticks than it holds)."""
    text = " ".join(str(value).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}" if longest or text.startswith(" ") else f"`{text}`"


def markdown_block(text: str, language: str = "") -> list[str]:
    """``text`` as a fenced code block whose fence is longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", *text.rstrip().splitlines(), fence]


METRIC_TYPES = {  # report metric -> the Hub's metric type and a display name
    "accuracy": ("accuracy", "Accuracy"),
    "f1_macro": ("f1", "F1 (macro)"),
    "f1_weighted": ("f1", "F1 (weighted)"),
    "f1_micro": ("f1", "F1 (micro)"),
    "subset_accuracy": ("accuracy", "Subset accuracy"),
    "log_loss": ("loss", "Log-loss"),
    "ece": ("ece", "Expected calibration error"),
    "mse": ("mse", "MSE"),
    "mae": ("mae", "MAE"),
    "pearson": ("pearsonr", "Pearson"),
    "spearman": ("spearmanr", "Spearman"),
}


def find_report(source: str | Path, report: str | Path | None = None) -> dict[str, Any] | None:
    """The evaluation report to quote in the model card: ``report`` if given, else the newest of the run
    directory's ``evaluation/report.json`` (beside ``checkpoints/``) and ``./evaluation/report.json`` that was
    written for this very model (its path, size and modification time)."""
    if report is not None:
        return read_report(report)
    source = Path(source)
    identity = model_identity(source)
    candidates = [source.resolve().parent.parent / "evaluation", Path("evaluation")]
    found = []
    for candidate in candidates:
        if (candidate / "report.json").is_file():
            data = read_report(candidate)
            model = data.get("model") or {}
            if identity and all(model.get(key) == value for key, value in identity.items()):
                found.append(((candidate / "report.json").stat().st_mtime_ns, data))
    return max(found, key=lambda item: item[0])[1] if found else None


def model_index(name: str, report: dict[str, Any]) -> list[str]:
    """The ``model-index`` metadata the Hub reads (YAML lines) for a report's headline numbers."""
    dataset = Path(str((report.get("data") or {}).get("path", "evaluation data"))).name
    results = {
        "task": {"type": "text-classification", "name": "Text Classification"},
        "dataset": {"name": dataset, "type": dataset},
        "metrics": [
            {"type": METRIC_TYPES.get(key, (key, key))[0], "value": round(float(value), 6),
             "name": METRIC_TYPES.get(key, (key, key))[1]}
            for key, value in report["metrics"].items()
            if value is not None
        ],
    }  # fmt: skip
    text = yaml.safe_dump({"model-index": [{"name": name, "results": [results]}]}, sort_keys=False)
    return text.rstrip().splitlines()


def model_card(classifier: Classifier, report: dict[str, Any] | None = None, name: str = "model") -> str:
    """A README.md for the exported directory: base model, labels, training data and config, metrics (and an
    evaluation report's, as ``model-index`` metadata), versions."""
    import lightning
    import transformers

    info = classifier.info
    config = classifier.model.config
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags:\n- lightbert\n- text-classification",
        *(model_index(name, report) if report else []),
        "---",
        "",
        f"# {markdown_text(config.model_type)} sequence classifier ({classifier.task.replace('_', '-')})",
        "",
        f"Fine-tuned with [lightbert](https://pypi.org/project/lightbert/) from"
        f" {markdown_code(_base_model_name(classifier))}; exported from {markdown_code(Path(info.path).name)}"
        f" ({info.kind}).",
        "",
        "## Labels",
        "",
    ]
    if classifier.labels:
        lines += ["| id | label |", "| --- | --- |"] + [
            f"| {i} | {markdown_text(name)} |" for i, name in enumerate(classifier.labels)
        ]
    else:
        lines.append("Regression: one output, the predicted score.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'classifier = pipeline("text-classification", model="path/to/this/directory")',
        'print(classifier("a gripping, beautifully acted film", truncation=True))',
        "```",
        "",
        'or `lightbert predict path/to/this/directory "some text"`.',
        "",
        "## Training",
        "",
    ]
    if info.data:
        lines += [f"- {markdown_text(key)}: {markdown_code(value)}" for key, value in info.data.items()]
    if info.epochs_completed is not None:
        lines.append(f"- epochs completed: {info.epochs_completed}, optimizer steps: {info.global_step}")
    if info.class_weights and classifier.labels:
        weights = describe_class_weights(classifier.task, classifier.labels, info.class_weights)
        lines.append(f"- loss weighted for imbalanced labels, {markdown_text(weights)}")
    if classifier.thresholds:
        picked = ", ".join(f"{markdown_text(name)} {t:.3f}" for name, t in classifier.thresholds.items())
        lines.append(
            f"- thresholds picked to maximise each label's F1 on the validation data (in config.json): {picked}"
        )
    if info.training_config:
        lines += ["", "Configuration (`lightbert fit --config`):", "", *markdown_block(info.training_config, "yaml")]
    metrics = info.metrics
    lines += ["", "## Validation metrics", ""]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {markdown_text(k)} | {v:.4f} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("Not recorded in the source checkpoint.")
    if report:
        rows = report.get("rows")
        data = (report.get("data") or {}).get("path")
        shown = markdown_code(Path(str(data)).name)
        lines += ["", "## Evaluation", "", f"`lightbert evaluate` on {shown} ({markdown_text(rows)} rows):", ""]
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {markdown_text(k)} | {v:.4f} |" for k, v in report["metrics"].items() if v is not None]
    versions = info.versions
    lines += [
        "",
        "## Versions",
        "",
        f"- trained with: {markdown_text(', '.join(f'{k} {v}' for k, v in versions.items()) or 'unknown')}",
        f"- exported with: lightbert {__version__}, torch {torch.__version__},"
        f" transformers {transformers.__version__}, lightning {lightning.__version__}",
        "",
    ]
    return "\n".join(lines)


REMOTE_CODE_FIELDS = ("auto_map", "custom_pipelines")  # what makes transformers import code named in the files


def without_remote_code(config: Any, tokenizer: Any) -> None:
    """Strip the fields that name code to import (a checkpoint's HF config may carry the base's ``auto_map``): the
    exported directory is loaded by transformers' own classes, and lightbert refuses directories that ask for code."""
    for field in REMOTE_CODE_FIELDS:
        if hasattr(config, field):
            delattr(config, field)
        tokenizer.init_kwargs.pop(field, None)


def verify_export(directory: Path, classifier: Classifier, tolerance: float) -> float:
    """Reload ``directory`` with transformers alone and compare its logits with the source model's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        str(directory), local_files_only=True, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    pairs = SAMPLE_PAIRS if classifier.paired else None
    expected = classifier.logits(SAMPLE_TEXTS, pairs, batch_size=len(SAMPLE_TEXTS))
    with torch.inference_mode():
        inputs = tokenizer(SAMPLE_TEXTS, text_pair=pairs, truncation=True, padding=True, return_tensors="pt")
        got = model(**inputs).logits.float()
    difference = float((got - expected).abs().max())
    if not difference <= tolerance:
        raise LightbertError(
            f"the exported model disagrees with the source: max logit difference {difference:.2e} > {tolerance:.0e}",
            "nothing was written; report this as a bug",
        )
    return difference


def export(
    source: str | Path,
    out_dir: str | Path,
    base: str | Path | None = None,
    overwrite: bool = False,
    tolerance: float = 1e-5,
    trust_checkpoint: bool = False,
    report: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``source`` (a lightbert checkpoint, a recipe checkpoint with ``base``, or an HF directory) to ``out_dir``
    as model.safetensors, config.json (id2label, label2id, problem_type), tokenizer files and a model card, verified
    by reloading. Returns what was written and the measured logit difference."""
    out_dir = Path(out_dir)
    source_path = Path(source)
    if out_dir.resolve() == source_path.resolve() or source_path.resolve().is_relative_to(out_dir.resolve()):
        raise LightbertError(f"cannot export {source} into itself ({out_dir})", "choose another output directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:  # before the model loads
        raise LightbertError(
            f"output directory is not empty: {out_dir}", "choose another directory or pass --overwrite"
        )
    evaluation = find_report(source, report)
    classifier = load(source, base, trust_checkpoint=trust_checkpoint)
    with staged_directory(out_dir, overwrite) as staging:
        # pipeline(truncation=True) then cuts where lightbert predict cuts
        classifier.tokenizer.model_max_length = classifier.max_length
        without_remote_code(classifier.model.config, classifier.tokenizer)
        classifier.model.save_pretrained(str(staging))
        classifier.tokenizer.save_pretrained(str(staging))
        (staging / "README.md").write_text(model_card(classifier, evaluation, out_dir.name), encoding="utf-8")
        difference = verify_export(staging, classifier, tolerance)
    return {
        "directory": str(out_dir),
        "files": sorted(p.name for p in out_dir.iterdir()),
        "max_logit_difference": difference,
        "labels": classifier.labels,
        "task": classifier.task,
        "report": (evaluation or {}).get("data", {}).get("path") if evaluation else None,
    }
