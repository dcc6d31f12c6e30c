"""Safe with untrusted files, and nothing lost: file checks before anything is loaded, and atomic writes.

- ``check_model_files``: a Hugging Face directory's config.json (no remote code) and weight files (complete
  safetensors, not Git LFS pointers), checked before transformers reads them.
- ``check_safetensors``: validates a safetensors header against the file, so a cut or malformed file gets a
  message that names it instead of a raw parser error.
- ``check_hyperparameters``: refuses checkpoints whose hyper-parameters ask Lightning to import something.
- ``atomic_write``: temporary file in the same directory, flushed and fsynced, renamed over the target, directory
  fsynced; the previous file stays intact until the new one is complete.
- ``staged_directory``: the same for a whole directory (built beside its destination, renamed into place).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from lightbert.errors import LightbertError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec"
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit
# The value LightningCLI itself writes; anything else would make Lightning import a name taken from the file.
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def is_lfs_pointer(path: Path) -> bool:
    """A small text file that Git LFS left in place of the real content."""
    try:
        if path.stat().st_size > 1024:
            return False
        with open(path, "rb") as f:
            return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def refuse_lfs_pointer(path: Path) -> None:
    if is_lfs_pointer(path):
        raise LightbertError(
            f"{path} is a Git LFS pointer, not the file itself", "fetch the real file with 'git lfs pull'"
        )


def check_safetensors(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensors' shapes in a safetensors file, by name; a clear error if ``path`` is not a complete, well-formed
    safetensors file."""
    refuse_lfs_pointer(path)

    def bad(reason: str) -> LightbertError:
        return LightbertError(
            f"{path} is not a valid safetensors file: {reason}",
            "the file is truncated or corrupt; save or download it again",
        )

    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise bad(f"only {size} bytes")
        header_length = int.from_bytes(prefix, "little")
        if header_length > MAX_SAFETENSORS_HEADER or 8 + header_length > size:
            raise bad(f"its header claims {header_length} bytes but the file has {size}")
        raw = f.read(header_length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_size = size - 8 - header_length
    spans = []
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict) or info.get("dtype") not in SAFETENSORS_DTYPE_BYTES:
            raise bad(f"tensor {name!r} has no known dtype")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has a malformed shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise bad(f"tensor {name!r} has malformed data_offsets")
        start, end = offsets
        if not 0 <= start <= end:
            raise bad(f"tensor {name!r} has data_offsets {offsets}")
        if end > data_size:
            raise bad(f"tensor {name!r} ends at byte {end} of {data_size} (the file is cut short)")
        if end - start != math.prod(shape) * SAFETENSORS_DTYPE_BYTES[info["dtype"]]:
            raise bad(f"tensor {name!r}: {end - start} bytes do not hold shape {shape} of {info['dtype']}")
        if any(d >= 2**63 for d in shape):  # the reader's int64: a zero-sized tensor of such a shape overflows it
            raise bad(f"tensor {name!r} has a dimension beyond 2**63")
        spans.append((start, end))
        shapes[name] = tuple(shape)
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise bad("tensor data overlaps or leaves holes")
        position = end
    if position != data_size:
        raise bad(f"{data_size - position} bytes after the last tensor")
    return shapes


def check_model_files(path: Path, weights: bool) -> dict[str, Any]:
    """config.json of a Hugging Face directory (refusing remote code) and, if ``weights``, its weight files."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise LightbertError(
            f"{path} has no config.json, so it is not a Hugging Face model directory",
            "give a directory written by save_pretrained",
        )
    refuse_lfs_pointer(config_path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LightbertError(
            f"{config_path} is not valid JSON ({err})", "the directory is corrupt; save it again"
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise LightbertError(
            f"{config_path} has no model_type",
            'add "model_type" (e.g. "bert") to config.json, or give a directory written by save_pretrained',
        )
    if config.get("auto_map"):
        raise LightbertError(
            f"{path} asks for remote code (auto_map in config.json), which lightbert never runs",
            "use a model whose code ships with transformers",
        )
    if weights:
        present = [name for name in WEIGHT_FILES if (path / name).is_file()]
        if not present:
            raise LightbertError(
                f"{path} has no weights (model.safetensors or pytorch_model.bin)", "save the model with save_pretrained"
            )
        for name in present:
            if name == "model.safetensors":
                check_safetensors(path / name)
            elif name == "model.safetensors.index.json":
                for shard in sorted(set(weight_index_shards(path / name))):
                    check_safetensors(path / shard)
            else:
                refuse_lfs_pointer(path / name)
    return config


def weight_index_shards(index: Path) -> list[str]:
    """The shard files a weight index names, each checked to be a file beside it."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = [str(v) for v in weight_map.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise LightbertError(
            f"{index} is not a valid weight index", "the directory is corrupt; save it again"
        ) from None
    for shard in shards:
        if Path(shard).name != shard or not (index.parent / shard).is_file():
            raise LightbertError(
                f"{index} names a missing or outside shard: {shard!r}", "the directory is incomplete; save it again"
            )
    return shards


def check_hyperparameters(checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse hyper-parameters that ask Lightning to import something (CVE-2026-58659 and kin): lightbert never
    instantiates from a file, and a file that asks to is not one to trust."""
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        hparams = checkpoint.get(key)
        if not isinstance(hparams, dict):
            continue
        instantiator = hparams.get("_instantiator")
        if instantiator is not None and instantiator != LIGHTNING_INSTANTIATOR:
            raise LightbertError(
                f"{path} asks to import {instantiator!r} through {key}['_instantiator']; refused",
                "lightbert never imports code named in a checkpoint; use another file",
            )
        if "_class_path" in hparams:
            raise LightbertError(
                f"{path} asks to import {hparams['_class_path']!r} through {key}['_class_path']; refused",
                "lightbert never imports code named in a checkpoint; use another file",
            )


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], what: str = "file") -> None:
    """Write ``path`` through ``write(file)`` atomically: a crash, a full disk or an error leaves the previous
    file (if any) intact and no partial file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise LightbertError(
                f"disk full while writing {what} {path}; the previous one is intact", "free some space and run again"
            ) from None
        raise LightbertError(
            f"cannot write {what} {path}: {err.strerror or err}", "check the directory's permissions and free space"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(directory: Path, name_glob: str = "*.ckpt") -> list[Path]:
    """Remove temporary files that an interrupted ``atomic_write`` left behind (``.NAME.XXXX.tmp``)."""
    removed = []
    if directory.is_dir():
        for tmp in directory.glob(f".{name_glob}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_writable_directory(directory: str | Path, what: str, create: bool = True) -> Path:
    """Prove ``directory`` writable before any work starts: create it (``create``), or check that the nearest
    existing directory on its path is one that can be written to, leaving nothing behind."""
    directory = Path(directory)
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
            existing = directory
        else:
            existing = directory.absolute()
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                raise NotADirectoryError(20, "Not a directory")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".lightbert-write-test-"):
            pass
    except OSError as err:
        raise LightbertError(
            f"{what} {directory} is not writable ({err.strerror or err})", "choose a directory you can write to"
        ) from None
    return directory


@contextlib.contextmanager
def staged_directory(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory next to ``out_dir`` and rename it into place once the ``with`` block succeeds, so a failure
    leaves nothing behind and never touches what was there. An existing non-empty ``out_dir`` is replaced only with
    ``overwrite``, and only after the new one is complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LightbertError(f"{out_dir} exists and is not a directory", "choose another output directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise LightbertError(
            f"output directory is not empty: {out_dir}", "choose another directory or pass --overwrite"
        )
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=parent))
    except OSError as err:
        raise LightbertError(
            f"cannot write {out_dir} ({err.strerror or err})", "choose a directory you can write to"
        ) from None
    try:
        yield staging
        if out_dir.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=parent))
            previous.rmdir()
            out_dir.rename(previous)
            staging.rename(out_dir)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staging.rename(out_dir)
        fsync_directory(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
