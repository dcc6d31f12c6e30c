"""Hostile and broken inputs: nothing runs from a file, and every bad input gets one clear line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_one_error_line, copy_directory, run_cli, sentiment_rows, write_csv

from lightbert.errors import LightbertError
from lightbert.safety import atomic_write, check_safetensors, remove_stale_temporaries, staged_directory

PROBE_MODULE = "lightbert_probe_payload"


# -- files to be hostile with ------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


@pytest.fixture
def evil_pickle(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(sentinel)}}, path)
    return path, sentinel


@pytest.fixture
def import_payload(tmp_path, trained_checkpoint, monkeypatch):
    """A plain-data checkpoint (weights_only loads it) whose hyper-parameters name a module to import; the module
    writes a sentinel file if it is ever imported."""
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    sentinel = tmp_path / "imported"
    (module_dir / f"{PROBE_MODULE}.py").write_text(f"open({str(sentinel)!r}, 'w').close()\ndef boom(*a, **k): pass\n")
    monkeypatch.syspath_prepend(str(module_dir))  # importable, if anything ever tried
    data = torch.load(trained_checkpoint, weights_only=True)
    data["hyper_parameters"]["_instantiator"] = f"{PROBE_MODULE}.boom"
    path = tmp_path / "payload.ckpt"
    torch.save(data, path)
    class_path = torch.load(trained_checkpoint, weights_only=True)
    class_path["hyper_parameters"]["_class_path"] = f"{PROBE_MODULE}.Model"
    torch.save(class_path, tmp_path / "class_path.ckpt")
    return path, tmp_path / "class_path.ckpt", sentinel


# -- no code runs from a file ----------------------------------------------------------------------------------------


def test_malicious_pickle_is_refused_by_every_entry_point(evil_pickle, tmp_path, tiny_bert, sentiment_files):
    path, sentinel = evil_pickle
    train, val = sentiment_files
    fit = [
        "fit",
        f"--model.base={tiny_bert}",
        f"--data.train={train}",
        f"--data.validation={val}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        f"--ckpt_path={path}",
    ]
    for args in (["predict", path, "text"], ["export", path, tmp_path / "out"], ["inspect", path], fit):
        result = run_cli(*args)
        assert_one_error_line(result, "open object, which could run code")
    assert not sentinel.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("which", ["_instantiator", "_class_path"])
def test_hyperparameter_import_payload_is_refused_before_any_import(which, import_payload):
    instantiator, class_path, sentinel = import_payload
    path = instantiator if which == "_instantiator" else class_path
    for args in (["predict", path, "text"], ["inspect", path]):
        assert_one_error_line(run_cli(*args), f"through hyper_parameters['{which}']; refused")
    assert not sentinel.exists() and PROBE_MODULE not in sys.modules


def test_trust_checkpoint_loads_a_pickle_with_a_warning(trained_checkpoint, tmp_path):
    data = torch.load(trained_checkpoint, weights_only=True)
    data["hyper_parameters"]["where"] = Path("/tmp")  # harmless, but not weights_only-safe
    path = tmp_path / "mine.ckpt"
    torch.save(data, path)
    assert_one_error_line(run_cli("predict", path, "good"), "pathlib", "refused")
    result = run_cli("predict", path, "good", "--trust_checkpoint", "true")
    assert result.code == 0 and "warning: loading" in result.err and "--trust_checkpoint" in result.err
    assert json.loads(result.out)["label"] in ("negative", "positive")


# -- the matrix of bad inputs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, trained_checkpoint, exported_dir):
    tmp = tmp_path_factory.mktemp("bad")
    files = {}
    files["notes"] = tmp / "notes.ckpt"
    files["notes"].write_text("just some text\n")
    raw = trained_checkpoint.read_bytes()
    files["truncated"] = tmp / "truncated.ckpt"
    files["truncated"].write_bytes(raw[: len(raw) - 1024])
    files["empty_dir"] = tmp / "empty_dir"
    files["empty_dir"].mkdir()
    cut = copy_directory(exported_dir, tmp / "cut_safetensors")
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    files["cut_safetensors"] = cut
    lfs = copy_directory(exported_dir, tmp / "lfs")
    (lfs / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    files["lfs"] = lfs
    files["hf"] = exported_dir
    files["train"] = write_csv(tmp / "train.csv", ["text", "label"], sentiment_rows(16))
    files["no_text"] = write_csv(tmp / "no_text.csv", ["review", "label"], sentiment_rows(8))
    files["empty"] = tmp / "empty.csv"
    files["empty"].write_text("")
    files["latin1"] = tmp / "latin1.csv"
    files["latin1"].write_bytes("text,label\ncaf\xe9 cr\xe8me,1\nbad,0\n".encode("latin-1"))
    files["unseen"] = write_csv(tmp / "unseen.csv", ["text", "label"], [("meh", "2"), ("good", "1")])
    files["nan"] = write_csv(tmp / "nan.csv", ["text", "score"], [("good", "1.5"), ("bad", "nan"), ("ok", "2.5")])
    files["mixed"] = write_csv(tmp / "mixed.csv", ["text", "label"], [("good", "1"), ("bad", "negative")])
    three = [(text, ["a", "b", "c"][i % 3]) for i, (text, _) in enumerate(sentiment_rows(12))]
    files["three"] = write_csv(tmp / "three.csv", ["text", "label"], three)
    files["ragged"] = tmp / "ragged.csv"
    files["ragged"].write_text("text,label\ngood,1\nbad,0,extra\n", encoding="utf-8")
    files["not_json"] = tmp / "not_json.jsonl"
    files["not_json"].write_text('{"text": "good", "label": 1}\n{"text": "bad",\n', encoding="utf-8")
    files["existing"] = tmp / "existing.jsonl"
    files["existing"].write_text("precious\n")
    return files


CASES = {
    "missing path": (["predict", "{tmp}/nothing.ckpt", "x"], ["not found"]),
    "directory without config": (["predict", "{empty_dir}", "x"], ["has no config.json"]),
    "non-checkpoint file": (["predict", "{notes}", "x"], ["is not a checkpoint file"]),
    "truncated checkpoint": (["predict", "{truncated}", "x"], ["truncated.ckpt is truncated or corrupt"]),
    "corrupt safetensors": (
        ["predict", "{cut_safetensors}", "x"],
        ["model.safetensors is not a valid safetensors file"],
    ),
    "git lfs pointer": (["predict", "{lfs}", "x"], ["is a Git LFS pointer", "git lfs pull"]),
    "url": (["predict", "https://example.com/model.ckpt", "x"], ["not URLs"]),
    "missing text column": (
        ["fit", "--data.train={no_text}", "--data.validation={no_text}", "--data.text_column=text"],
        ["no text column 'text'"],
    ),
    "empty data file": (["fit", "--data.train={empty}", "--data.validation={train}"], ["data file is empty"]),
    "not utf-8": (["fit", "--data.train={latin1}", "--data.validation={train}"], ["is not valid UTF-8"]),
    "row with too many fields": (
        ["fit", "--data.train={ragged}", "--data.validation={train}"],
        ["row 2 has 3 fields", "check the delimiter"],
    ),
    "jsonl line not json": (
        ["predict", "{hf}", "--input", "{not_json}"],
        ["as jsonl: line 2", "one JSON object per line"],
    ),
    "unseen validation label": (
        ["fit", "--data.train={train}", "--data.validation={unseen}"],
        ["labels the model does not know: 1 label: 2"],
    ),
    "nan regression target": (
        ["fit", "--data.train={nan}", "--data.validation={nan}"],
        ["row 2 has regression target 'nan'"],
    ),
    "mixed label types": (
        ["fit", "--data.train={mixed}", "--data.validation={mixed}"],
        ["mixes numeric and text labels"],
    ),
    "label count differs from the base head": (
        ["fit", "--model.base={hf}", "--data.train={three}", "--data.validation={three}"],
        ["fine-tuned for", "--model.new_head"],
    ),
    "output file exists": (["predict", "{hf}", "x", "--output", "{existing}"], ["output file exists"]),
    "bad flag": (["predict", "{hf}", "x", "--batch_size", "many"], ["batch_size"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_clear_line_exit_2_and_loses_nothing(case, bad_inputs, tiny_bert, tmp_path):
    args, fragments = CASES[case]
    names = {k: str(v) for k, v in bad_inputs.items()} | {"tmp": str(tmp_path)}
    args = [a.format(**names) for a in args]
    if args[0] == "fit":
        if not any(a.startswith("--model.base") for a in args):
            args.append(f"--model.base={tiny_bert}")
        args.append(f"--trainer.default_root_dir={tmp_path / 'runs'}")
    before = {p: p.read_bytes() for p in bad_inputs.values() if isinstance(p, Path) and p.is_file()}
    assert_one_error_line(run_cli(*args), *fragments)
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made
    assert {p: p.read_bytes() for p in before} == before


# -- safetensors validation --------------------------------------------------------------------------------------------


def safetensors_file(tmp_path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes((length if length is not None else len(raw)).to_bytes(8, "little") + raw + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (GOOD, b"\0" * 8, None, None),
        (GOOD, b"\0" * 4, None, "cut short"),
        (GOOD, b"\0" * 8, 10**12, "header claims"),
        (b"not json at all", b"", None, "not JSON"),
        (b"[1, 2]", b"", None, "not a JSON object"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "do not hold shape"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "overlaps",
        ),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "no known dtype"),
        ({"__metadata__": {"format": 1}, **GOOD}, b"\0" * 8, None, "__metadata__"),
    ],
)
def test_safetensors_headers_are_validated(tmp_path, header, data, length, message):
    path = safetensors_file(tmp_path, header, data, length)
    if message is None:
        check_safetensors(path)
    else:
        with pytest.raises(LightbertError, match=message):
            check_safetensors(path)


# -- atomic writes ----------------------------------------------------------------------------------------------------


def test_atomic_write_keeps_the_previous_file_when_writing_fails(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"good old checkpoint")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(LightbertError, match="disk full while writing checkpoint"):
        atomic_write(target, half_then_fail, what="checkpoint")
    assert target.read_bytes() == b"good old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".last.ckpt.abc123.tmp").write_bytes(b"partial")
    (tmp_path / "last.ckpt").write_bytes(b"complete")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".last.ckpt.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_old_lightning_is_refused_at_start_up():
    code = "import importlib.metadata as m; m.version = lambda name: '2.6.3'; import lightbert"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "lightbert needs lightning>=2.6.6, found 2.6.3" in result.stderr


def test_a_staged_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_directory(out) as staging:
        (staging / "half").write_text("written")
        raise RuntimeError("failed half-way")
    assert list(tmp_path.iterdir()) == []
    with staged_directory(out) as staging:
        (staging / "whole").write_text("written")
    assert [p.name for p in out.iterdir()] == ["whole"] and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("key", ["hparams", "module_arguments"])
def test_an_import_named_in_lightnings_legacy_hyperparameter_keys_is_refused(key, import_payload, tmp_path):
    data = torch.load(import_payload[0], weights_only=True)
    data[key] = data.pop("hyper_parameters")
    torch.save(data, tmp_path / "legacy.ckpt")
    assert_one_error_line(run_cli("predict", tmp_path / "legacy.ckpt", "text"), f"through {key}['_instantiator']")
    assert not import_payload[2].exists() and PROBE_MODULE not in sys.modules


class _RunsAShell:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("1",))


@pytest.mark.parametrize(("payload", "named"), [(_RunsAShell(), "posix.system"), (_Evaluates(), "builtins.eval")])
def test_a_refused_pickle_names_the_object_it_wanted(payload, named, tmp_path):
    torch.save({"state_dict": {}, "x": payload}, tmp_path / "evil.ckpt")
    assert_one_error_line(run_cli("inspect", tmp_path / "evil.ckpt"), f"holds a {named} object, which could run code")


def test_flipped_bytes_inside_a_checkpoints_weights_are_refused(trained_checkpoint, tmp_path):
    import zipfile

    with zipfile.ZipFile(trained_checkpoint) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)  # the largest tensor's data
    data = bytearray(trained_checkpoint.read_bytes())
    local = member.header_offset  # the local header: name and extra-field lengths at bytes 26 and 28
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little")
    start += int.from_bytes(data[local + 28 : local + 30], "little")
    for i in range(start, start + min(1000, member.file_size)):
        data[i] ^= 0xFF
    (tmp_path / "flipped.ckpt").write_bytes(bytes(data))
    result = run_cli("predict", tmp_path / "flipped.ckpt", "text")
    assert_one_error_line(result, f"is corrupt: {member.filename} fails its checksum", "use an earlier checkpoint")
