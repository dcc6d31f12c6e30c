"""Every field lightbert reads from a checkpoint's lightbert section, a model's config.json and a tokenizer's files,
given a value of the wrong type or range, either still works or is refused in one line: never an internal error,
never a traceback."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_one_error_line, run_cli

import lightbert
from lightbert.errors import LightbertError
from lightbert.export import export

WRONG_VALUES: list[Any] = ["abc", -5, [1, "x"], {"a": 1}, None, 10**12]
SECTION_FIELDS = [
    "format_version",
    "hf_config",
    "tokenizer_files",
    "task",
    "labels",
    "training_config",
    "versions",
    "metrics",
    "class_weights",
    "data_files",
]
DATA_FIELDS = ["text_column", "text_pair_column", "label_column", "label_delimiter", "max_length", "paired"]
DATA_FIELDS += ["long_texts", "stride"]


def loads_or_refuses(path: Path) -> None:
    """``lightbert.load`` and a prediction work, or a LightbertError says what is wrong."""
    try:
        classifier = lightbert.load(path)
        classifier.predict(["a fine film", "a dull one"])
    except LightbertError as err:
        assert err.problem and err.hint, str(err)


@pytest.fixture(scope="module")
def checkpoint_data(trained_checkpoint) -> dict[str, Any]:
    return torch.load(trained_checkpoint, weights_only=True)


def _saved(checkpoint: dict[str, Any], directory: Path) -> Path:
    path = directory / "edited.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("field", SECTION_FIELDS)
def test_a_section_field_of_the_wrong_type_loads_or_is_refused(field, checkpoint_data, tmp_path):
    for value in WRONG_VALUES:
        edited = copy.copy(checkpoint_data)
        edited["lightbert"] = {**checkpoint_data["lightbert"], field: value}
        loads_or_refuses(_saved(edited, tmp_path))


@pytest.mark.parametrize("field", DATA_FIELDS)
def test_a_data_setting_of_the_wrong_type_loads_or_is_refused(field, checkpoint_data, tmp_path):
    for value in [*WRONG_VALUES, 0, True]:
        section = checkpoint_data["lightbert"]
        edited = {**checkpoint_data, "lightbert": {**section, "data": {**section["data"], field: value}}}
        loads_or_refuses(_saved(edited, tmp_path))


@pytest.mark.parametrize("value", ["abc", -5, 0])
def test_a_checkpoints_max_length_that_is_no_length_is_one_line(value, checkpoint_data, tmp_path):
    section = checkpoint_data["lightbert"]
    edited = {**checkpoint_data, "lightbert": {**section, "data": {**section["data"], "max_length": value}}}
    result = run_cli("predict", _saved(edited, tmp_path), "a fine film")
    assert_one_error_line(result, "damaged lightbert section", "data.max_length")


def test_a_checkpoint_of_an_unknown_model_type_is_one_line(checkpoint_data, tmp_path):
    section = checkpoint_data["lightbert"]
    edited = {**checkpoint_data, "lightbert": {**section, "hf_config": {**section["hf_config"], "model_type": "nope"}}}
    result = run_cli("predict", _saved(edited, tmp_path), "a fine film")
    assert_one_error_line(result, "model_type 'nope'", "does not know")


@pytest.fixture(scope="module")
def exported(trained_checkpoint, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("exported") / "model"
    export(trained_checkpoint, directory)
    return directory


def _edited_json(source: Path, target: Path, name: str, field: str, value: Any) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    data = json.loads((target / name).read_text())
    data[field] = value
    (target / name).write_text(json.dumps(data))
    return target


def test_every_config_field_of_the_wrong_type_loads_or_is_refused(exported, tmp_path):
    fields = [k for k in json.loads((exported / "config.json").read_text()) if k != "transformers_version"]
    for field in fields:
        for value in WRONG_VALUES:
            loads_or_refuses(_edited_json(exported, tmp_path / "m", "config.json", field, value))


def test_every_tokenizer_config_field_of_the_wrong_type_loads_or_is_refused(exported, tmp_path):
    for field in json.loads((exported / "tokenizer_config.json").read_text()):
        for value in WRONG_VALUES:
            loads_or_refuses(_edited_json(exported, tmp_path / "m", "tokenizer_config.json", field, value))


@pytest.mark.parametrize("named", ["AutoModel", "pipeline", "NotATokenizerAtAll", 5])
def test_a_tokenizer_class_that_is_no_tokenizer_is_one_line(named, exported, tmp_path):
    directory = _edited_json(exported, tmp_path / "m", "tokenizer_config.json", "tokenizer_class", named)
    result = run_cli("predict", directory, "a fine film")
    assert_one_error_line(result, "names tokenizer_class", "which is not a tokenizer")


@pytest.mark.parametrize("content", ["{}", "[1]", "{x"])
def test_a_damaged_tokenizer_json_is_one_line(content, exported, tmp_path):
    directory = Path(shutil.copytree(exported, tmp_path / "m"))
    (directory / "tokenizer.json").write_text(content)
    result = run_cli("predict", directory, "a fine film")
    assert_one_error_line(result, "tokenizer", "save the tokenizer with save_pretrained")


def test_a_vocabulary_without_its_unknown_token_is_one_line(exported, tmp_path):
    directory = Path(shutil.copytree(exported, tmp_path / "m"))
    (directory / "tokenizer.json").unlink()
    (directory / "vocab.txt").write_text("")
    result = run_cli("predict", directory, "a fine film")
    assert_one_error_line(result, "cannot load the tokenizer", "Missing [UNK] token")


def test_a_safetensors_shape_beyond_int64_is_one_line(exported, tmp_path):
    directory = Path(shutil.copytree(exported, tmp_path / "m"))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**64, 0], "data_offsets": [0, 0]}}).encode()
    (directory / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    result = run_cli("predict", directory, "a fine film")
    assert_one_error_line(result, "not a valid safetensors file", "beyond 2**63")
