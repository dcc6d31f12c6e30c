"""lightbert: fine-tune, checkpoint, resume, load and predict with BERT-family sequence classifiers,
on PyTorch Lightning and Hugging Face Transformers, correctly and offline.

The names below load lazily: ``lightbert.load`` and prediction never import Lightning (slow to import), and
``import lightbert`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

MIN_LIGHTNING = (2, 6, 6)

_LAZY = {
    "load": "lightbert.loader",
    "evaluate": "lightbert.evaluation",
    "Classifier": "lightbert.classifier",
    "ClassificationDataModule": "lightbert.datamodule",
    "SequenceClassifier": "lightbert.model",
    "Checkpointing": "lightbert.callbacks",
    "LightbertError": "lightbert.errors",
}
__all__ = [*_LAZY, "__version__"]


def _check_lightning() -> None:
    # Below 2.6.6 a checkpoint's hyper-parameters can run code (CVE-2026-58659); 2.6.2/2.6.3 were malware.
    from importlib.metadata import version

    installed = version("lightning")
    parts = tuple(int(p) for p in installed.split("+")[0].split(".")[:3] if p.isdigit())
    if parts < MIN_LIGHTNING:
        raise ImportError(
            f"lightbert needs lightning>=2.6.6, found {installed}: older releases can run code from a checkpoint"
            " (pip install 'lightning>=2.6.6,<2.7')"
        )


_check_lightning()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightbert' has no attribute {name!r}")
