"""What a lightbert checkpoint holds beyond Lightning's own state, and how to read one safely.

Lightning's ``.ckpt`` is a pickle. Ours holds only what ``torch.load(weights_only=True)`` accepts (tensors, str,
int, float, bool, None, lists and dicts), so reading one never runs code. Beside Lightning's weights, optimizer,
scheduler and loop state, the ``"lightbert"`` section carries everything needed to use the model with nothing
else at hand: the HF config (with labels and problem type), the tokenizer files, the data settings, the resolved
training config, library versions, and the RNG states for an exact resume.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightbert.errors import LightbertError, note, one_line
from lightbert.hf import load_tokenizer
from lightbert.safety import check_hyperparameters, refuse_lfs_pointer

FORMAT_VERSION = 1
SECTION = "lightbert"


def versions() -> dict[str, str]:
    """Installed versions, as plain str (torch.__version__ is a TorchVersion, which weights_only refuses)."""
    from importlib.metadata import version

    from lightbert import __version__

    return {
        "lightbert": str(__version__),
        "torch": str(torch.__version__),
        "transformers": version("transformers"),
        "lightning": version("lightning"),
    }


def check_weights_only_safe(value: Any, where: str = "checkpoint") -> None:
    """Raise if ``value`` holds anything but tensors, str, int, float, bool, None, lists, tuples and dicts."""
    # Exact types: a str subclass (like torch's TorchVersion) is pickled as its class and refused on load.
    if value is None or type(value) in (str, int, float, bool) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_weights_only_safe(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}")
            check_weights_only_safe(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} holds a {type(value).__module__}.{type(value).__qualname__}, which weights_only loading refuses"
    )


# -- tokenizer files ------------------------------------------------------------------------------------------------


def tokenizer_files(tokenizer: Any) -> dict[str, Any]:
    """The files ``save_pretrained`` writes for ``tokenizer``: text files as str, others as uint8 tensors."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files: dict[str, Any] = {}
        for path in sorted(Path(tmp).rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            name = path.relative_to(tmp).as_posix()
            try:
                files[name] = data.decode("utf-8")
            except UnicodeDecodeError:  # e.g. a sentencepiece model
                files[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
    return files


def write_tokenizer_files(files: dict[str, Any], directory: str | Path) -> None:
    directory = Path(directory)
    for name, content in files.items():
        target = directory / name
        if not target.resolve().is_relative_to(directory.resolve()):
            raise LightbertError(
                f"checkpoint names a tokenizer file outside its directory: {name!r}",
                "the file is corrupt or hostile; do not use it",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content.numpy().tobytes())


def tokenizer_from_files(files: dict[str, Any], where: str = "the checkpoint") -> Any:
    """The tokenizer that ``tokenizer_files`` captured (written to a temporary directory and loaded from there);
    ``where`` names the checkpoint in messages."""
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(files, tmp)
        return load_tokenizer(tmp, where)


# -- RNG state --------------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) RNG states, in weights_only-safe form."""
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(int(x) for x in python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- the section ----------------------------------------------------------------------------------------------------


def config_dict(hf_config: Any) -> dict[str, Any]:
    """An HF config as plain JSON data (dtypes and other objects become strings)."""
    return json.loads(hf_config.to_json_string(use_diff=False))


def build_section(
    *,
    hf_config: Any,
    tokenizer_files: dict[str, Any],
    task: str,
    labels: list[str] | None,
    data_settings: dict[str, Any],
    training_config: str | None,
    rng: dict[str, Any] | None,
    metrics: dict[str, float] | None = None,
    rng_by_rank: list[Any] | None = None,
    class_weights: list[float] | None = None,
    data_files: dict[str, Any] | None = None,
) -> dict[str, Any]:
    section = {
        "format_version": FORMAT_VERSION,
        "hf_config": config_dict(hf_config),
        "tokenizer_files": tokenizer_files,
        "task": task,
        "labels": list(labels) if labels is not None else None,
        "data": dict(data_settings),
        "training_config": training_config,
        "versions": versions(),
        "rng": rng,
        "rng_by_rank": rng_by_rank,
        "metrics": dict(metrics or {}),
        "class_weights": list(class_weights) if class_weights else None,
        "data_files": data_files,  # the data's files by contents: to validate again, or resume, on the same data
    }
    check_weights_only_safe(section, "checkpoint['lightbert']")
    return section


def epochs_completed(checkpoint: dict[str, Any]) -> int | None:
    """How many epochs a Lightning checkpoint had trained through. Its ``epoch`` is the epoch it was written in: a
    checkpoint written at an epoch's validation comes before Lightning counts that epoch as done."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = (loop.get("epoch_progress") or {}).get("current") or {}
    batches = loop.get("epoch_loop.batch_progress") or {}
    if not isinstance(epochs.get("completed"), int):
        return None
    current = batches.get("current") or {}
    epoch_trained = batches.get("is_last_batch") and current.get("completed", 0) >= current.get("ready", 1)
    return int(epochs["completed"]) + (1 if epoch_trained and epochs["completed"] < epochs.get("ready", 0) else 0)


def unsafe_pickle_error(path: str | Path, err: Exception) -> LightbertError:
    """The error for a pickle that ``weights_only`` loading refused, naming the object it wanted to build."""
    match = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch words it two ways ("Unsupported global: GLOBAL x.y",
    # "unsupported GLOBAL x.y whose module x is blocked"); a bare name is a builtin
    name = match.group(1) if match else None
    what = (
        f"a {name if '.' in name else f'builtins.{name}'} object" if name else "objects beyond tensors and plain data"
    )
    return LightbertError(
        f"{path} holds {what}, which could run code when loaded; refused",
        "use a file written by lightbert or save_pretrained, or pass --trust_checkpoint for a file you made yourself",
    )


def _is_refused_object(err: Exception) -> bool:
    return bool(re.search(r"Unsupported (global|class|operand)|Weights only load failed", str(err)))


def check_zip_checksums(path: Path) -> None:
    """Every member of a checkpoint's zip archive against its CRC-32 (torch.load does not check them: flipped bytes
    in the weights would load as other weights). About 0.1 s for the 87 MB MiniLM checkpoint (README)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise LightbertError(
            f"{path} is truncated or corrupt ({one_line(str(err))[:120]})",
            "use an earlier checkpoint, or save it again",
        ) from None
    if damaged is not None:
        raise LightbertError(
            f"{path} is corrupt: {damaged} fails its checksum", "use an earlier checkpoint, or copy the file again"
        )


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Load a ``.ckpt`` on the CPU with ``weights_only=True``: a file that needs more is refused, never run, and so
    is one whose hyper-parameters ask to import code. ``trust_checkpoint=True`` (``--trust_checkpoint``) unpickles
    anything, for files the user made themselves, with a warning."""
    text = str(path)
    if "://" in text:
        raise LightbertError(
            f"checkpoint paths must be local files, not URLs: {text}",
            "download the file yourself and check where it comes from",
        )
    path = Path(path)
    if not path.is_file():
        raise LightbertError(
            f"checkpoint not found: {path}" if not path.is_dir() else f"{path} is a directory, not a checkpoint file",
            "check the path",
        )
    refuse_lfs_pointer(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and not trust_checkpoint:
        raise LightbertError(
            f"{path} is not a checkpoint file (torch.save writes a zip archive; this is not one)",
            "give a .ckpt written by lightbert or Lightning",
        )
    if magic == b"PK\x03\x04":
        check_zip_checksums(path)
    if trust_checkpoint:
        note(
            f"warning: loading {path} with --trust_checkpoint: a pickle can run any code;"
            " do this only with files you made yourself"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint, mmap=not trust_checkpoint)
    except pickle.UnpicklingError as err:
        if _is_refused_object(err):
            raise unsafe_pickle_error(path, err) from None
        raise LightbertError(
            f"{path} is not a checkpoint (it cannot be unpickled)", "give a .ckpt written by lightbert or Lightning"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, ImportError, AttributeError, TypeError) as err:
        message = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        if "zip" in message or "central directory" in message or "mmap" in message or isinstance(err, EOFError):
            raise LightbertError(
                f"{path} is truncated or corrupt ({message})", "use an earlier checkpoint, or save it again"
            ) from None
        raise LightbertError(
            f"{path} is not a readable checkpoint ({message})", "give a .ckpt written by lightbert or Lightning"
        ) from None
    if not isinstance(checkpoint, dict):
        raise LightbertError(
            f"{path} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__})",
            "use a .ckpt written by lightbert or Lightning",
        )
    if not trust_checkpoint:
        check_hyperparameters(checkpoint, path)
    return checkpoint


def lightbert_section(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``"lightbert"`` section of a checkpoint, checked for a version this release can read and for the parts
    a model is built from (the HF config and the tokenizer files)."""
    section = checkpoint.get(SECTION)
    if not isinstance(section, dict):
        raise LightbertError(f"{path} has no lightbert section", "give a .ckpt written by lightbert fit")
    version = section.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LightbertError(
            f"{path} has checkpoint format {version!r}; this lightbert reads up to {FORMAT_VERSION}",
            "upgrade lightbert",
        )
    config, files = section.get("hf_config"), section.get("tokenizer_files")
    problems = []
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        problems.append("no model config")
    if not isinstance(files, dict) or not files:
        problems.append("no tokenizer files")
    if not isinstance(checkpoint.get("state_dict"), dict):
        problems.append("no weights")
    problems += section_problems(section)
    if problems:
        raise LightbertError(
            f"{path} has a damaged lightbert section ({', '.join(problems[:3])})", "use another checkpoint of the run"
        )
    return section


def _is(kinds: tuple[type, ...]) -> Any:
    return lambda value: type(value) in kinds


def _is_name(value: Any) -> bool:
    return value is None or type(value) is str or (type(value) is int and value >= 0)


def _is_count(value: Any) -> bool:
    return value is None or (type(value) is int and value > 0)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) in (int, float) for v in value)


def _text_files(value: Any) -> bool:
    return isinstance(value, dict) and all(
        type(k) is str and (type(v) is str or isinstance(v, torch.Tensor)) for k, v in value.items()
    )


def _labels(value: Any) -> bool:
    return value is None or (
        isinstance(value, list) and all(type(v) is str for v in value) and len(set(value)) == len(value)
    )


# What each field of the section that lightbert reads may hold (absent fields are those of older checkpoints).
SECTION_FIELDS: dict[str, Any] = {
    "task": lambda value: value in ("single_label", "multi_label", "regression"),
    "labels": _labels,
    "tokenizer_files": _text_files,
    "training_config": lambda value: value is None or type(value) is str,
    "versions": lambda value: (
        value is None or (isinstance(value, dict) and all(type(v) is str for v in value.values()))
    ),
    "metrics": lambda value: value is None or (isinstance(value, dict) and _numbers(list(value.values()))),
    "class_weights": lambda value: value is None or _numbers(value),
    "data": lambda value: value is None or isinstance(value, dict),
    "data_files": lambda value: value is None or isinstance(value, dict),
    "rng": lambda value: value is None or isinstance(value, dict),
}
DATA_FIELDS: dict[str, Any] = {
    "text_column": _is_name,
    "text_pair_column": _is_name,
    "label_column": _is_name,
    "label_delimiter": lambda value: value is None or (type(value) is str and value != ""),
    "max_length": _is_count,
    "paired": _is((bool,)),
    "pair": _is((bool,)),
    "long_texts": lambda value: value in (None, "truncate", "chunk"),
    "stride": lambda value: value is None or (type(value) is int and value >= 0),
}


def section_problems(section: dict[str, Any]) -> list[str]:
    """The fields of a lightbert section that hold what no lightbert writes (a damaged or hand-made file)."""
    problems = [
        f"{key} {section[key]!r:.40}"
        for key, valid in SECTION_FIELDS.items()
        if key in section and not valid(section[key])
    ]
    data = section.get("data")
    if isinstance(data, dict):
        problems += [
            f"data.{key} {data[key]!r:.40}"
            for key, valid in DATA_FIELDS.items()
            if key in data and not valid(data[key])
        ]
    if not problems and section.get("task") != "regression" and section.get("labels") is None and "task" in section:
        problems.append(f"no labels for task {section['task']}")
    return problems
