"""`lightbert inspect`: what a path is and holds, decided by the same checks as loading it."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import copy_directory, run_cli

from lightbert.errors import LightbertError
from lightbert.inspection import inspect_model


def test_inspect_describes_a_lightbert_checkpoint(trained_checkpoint):
    info = inspect_model(trained_checkpoint)
    assert info["kind"] == "lightbert" and info["labels"] == ["negative", "positive"] and info["resumable"]
    assert info["architecture"] == "bert" and info["epoch"] == 1 and info["global_step"] == 6
    result = run_cli("inspect", trained_checkpoint)
    assert result.code == 0
    assert "lightbert checkpoint" in result.out and "resumable" in result.out and "negative, positive" in result.out


def test_inspect_describes_a_hugging_face_directory(exported_dir):
    info = inspect_model(exported_dir)
    assert info["kind"] == "huggingface" and not info["resumable"] and info["labels"] == ["negative", "positive"]
    assert info["weights"] == ["model.safetensors"] and "tokenizer.json" in info["tokenizer_files"]


def test_inspect_describes_a_recipe_checkpoint_as_not_resumable_by_lightbert(recipe_checkpoint):
    result = run_cli("inspect", recipe_checkpoint.path, "--json", "true")
    assert result.code == 0
    info = json.loads(result.out)
    assert info["kind"] == "recipe" and info["num_labels"] == 3 and info["architecture"] == "bert"
    assert info["optimizer_state"] and not info["resumable"]


def test_inspect_refuses_a_cut_safetensors_file_as_loading_does(exported_dir, tmp_path):
    cut = copy_directory(exported_dir, tmp_path / "cut")
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    with pytest.raises(LightbertError, match="not a valid safetensors file"):
        inspect_model(cut)


def test_inspect_refuses_a_damaged_lightbert_section_as_loading_does(trained_checkpoint, tmp_path):
    data = torch.load(trained_checkpoint, weights_only=True)
    data["lightbert"]["hf_config"] = "not a config"
    torch.save(data, tmp_path / "damaged.ckpt")
    with pytest.raises(LightbertError, match="damaged lightbert section \\(no model config\\)"):
        inspect_model(tmp_path / "damaged.ckpt")
