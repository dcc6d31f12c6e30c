"""Export a classifier to a complete Hugging Face directory that ``transformers.pipeline`` loads offline.

The directory is written next to its destination, checked by reloading it with transformers and comparing
logits with the source model, and only then renamed into place: a failed export leaves nothing behind and never
replaces what was there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from lightbert import __version__
from lightbert.bundled import DEFAULT_BASE_NAME
from lightbert.classifier import Classifier
from lightbert.errors import LightbertError
from lightbert.loader import load
from lightbert.safety import staged_directory

SAMPLE_TEXTS = [
    "a gripping, beautifully acted film",
    "dull, lifeless and far too long",
    "",
    "The senate passed the bill on Tuesday after a long debate.",
    "Ünïcödé — emoji 🎬 and 中文 text",
    "ok " * 300,  # longer than any model's limit: truncation must agree too
]
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


def model_card(classifier: Classifier) -> str:
    """A README.md for the exported directory: base model, labels, training data and config, metrics, versions."""
    import lightning
    import transformers

    info = classifier.info
    config = classifier.model.config
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags:\n- lightbert\n- text-classification",
        "---",
        "",
        f"# {config.model_type} sequence classifier ({classifier.task.replace('_', '-')})",
        "",
        f"Fine-tuned with [lightbert](https://pypi.org/project/lightbert/) from `{_base_model_name(classifier)}`; "
        f"exported from `{Path(info.path).name}` ({info.kind}).",
        "",
        "## Labels",
        "",
    ]
    if classifier.labels:
        lines += ["| id | label |", "| --- | --- |"] + [f"| {i} | {name} |" for i, name in enumerate(classifier.labels)]
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
        lines += [f"- {key}: `{value}`" for key, value in info.data.items()]
    if info.epoch is not None:
        lines.append(f"- epochs completed: {info.epoch}, optimizer steps: {info.global_step}")
    if info.training_config:
        lines += ["", "Configuration (`lightbert fit --config`):", "", "```yaml", info.training_config.rstrip(), "```"]
    metrics = info.metrics
    lines += ["", "## Validation metrics", ""]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("Not recorded in the source checkpoint.")
    versions = info.versions
    lines += [
        "",
        "## Versions",
        "",
        f"- trained with: {', '.join(f'{k} {v}' for k, v in versions.items()) or 'unknown'}",
        f"- exported with: lightbert {__version__}, torch {torch.__version__},"
        f" transformers {transformers.__version__}, lightning {lightning.__version__}",
        "",
    ]
    return "\n".join(lines)


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
    classifier = load(source, base, trust_checkpoint=trust_checkpoint)
    with staged_directory(out_dir, overwrite) as staging:
        # pipeline(truncation=True) then cuts where lightbert predict cuts
        classifier.tokenizer.model_max_length = classifier.max_length
        classifier.model.save_pretrained(str(staging))
        classifier.tokenizer.save_pretrained(str(staging))
        (staging / "README.md").write_text(model_card(classifier), encoding="utf-8")
        difference = verify_export(staging, classifier, tolerance)
    return {
        "directory": str(out_dir),
        "files": sorted(p.name for p in out_dir.iterdir()),
        "max_logit_difference": difference,
        "labels": classifier.labels,
        "task": classifier.task,
    }
