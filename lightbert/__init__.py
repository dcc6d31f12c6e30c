"""lightbert: fine-tune, checkpoint, resume, load and predict with BERT-family sequence classifiers,
on PyTorch Lightning and Hugging Face Transformers, correctly and offline."""

from __future__ import annotations

__version__ = "0.1.0"

MIN_LIGHTNING = (2, 6, 6)


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

from lightbert.data import ClassificationDataModule  # noqa: E402
from lightbert.errors import LightbertError  # noqa: E402
from lightbert.load import load  # noqa: E402
from lightbert.model import SequenceClassifier  # noqa: E402
from lightbert.predict import Classifier  # noqa: E402

__all__ = ["Classifier", "ClassificationDataModule", "LightbertError", "SequenceClassifier", "__version__", "load"]
