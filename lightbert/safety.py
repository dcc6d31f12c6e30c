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
import re
import shutil
import stat
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
# Where Lightning reads a module's or data module's hyper-parameters from, its legacy keys included.
HYPERPARAMETER_KEYS = ("hyper_parameters", "datamodule_hyper_parameters", "hparams", "module_arguments")
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
    for key in HYPERPARAMETER_KEYS:
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


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, since setting it to read it races with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode(path: Path, default: int = 0o666) -> int:
    """The mode to give a file (or, ``default=0o777``, a directory) written at ``path``: the replaced one's own mode,
    else ``default`` less the umask, as ``open`` and ``mkdir`` would."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return default & ~current_umask()


def write_target(path: str | Path) -> Path:
    """Where writing ``path`` lands: a symlink's target (written through, so the link stays a link), else ``path``."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


class _RecordingFile:
    """A file whose write errors are remembered: writers such as ``torch.save`` re-raise them as a RuntimeError
    ("[enforce fail at inline_container.cc:...] unexpected pos") that no longer says the disk is full."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def write_error(err: OSError, what: str, path: Path, existed: bool) -> LightbertError:
    """The one line for a write that failed (``existed``: whether a previous file is kept); a full disk said so."""
    kept = "the previous one is intact" if existed else "nothing was written"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return LightbertError(f"disk full while writing {what} {path}; {kept}", "free some space and run again")
    return LightbertError(
        f"cannot write {what} {path}: {err.strerror or err}; {kept}", "check the directory's permissions and free space"
    )


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], what: str = "file") -> None:
    """Write ``path`` through ``write(file)`` atomically: a crash, a full disk or an error leaves the previous
    file (if any) intact and no partial file under the final name. The file gets the replaced file's mode, or the
    umask's; a symlink is written through to its target."""
    path = Path(path)
    target = write_target(path)
    existed = target.exists()
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.fchmod(fd, output_mode(target))
        with os.fdopen(fd, "wb") as raw:
            recording = _RecordingFile(raw)
            try:
                write(recording)  # type: ignore[arg-type]
            except Exception as err:
                cause = recording.error or err.__context__  # torch's zip writer raises a RuntimeError over it
                if not isinstance(err, OSError) and isinstance(cause, OSError):
                    raise cause from None
                raise
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
        fsync_directory(target.parent)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(err, what, path, existed) from None
    except BaseException:
        if tmp is not None:
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
    target = write_target(out_dir).absolute()  # a symlinked directory is replaced where it points
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        os.chmod(staging, output_mode(target, 0o777))
    except OSError as err:
        raise LightbertError(
            f"cannot write {out_dir} ({err.strerror or err})", "choose a directory you can write to"
        ) from None
    try:
        yield staging
        _umask_modes(staging)
        if target.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            previous.rmdir()
            target.rename(previous)
            staging.rename(target)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staging.rename(target)
        fsync_directory(target.parent)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        failure = os_error_in(err)
        if failure is not None:
            raise write_error(failure, "directory", out_dir, existed) from None
        raise


def _umask_modes(directory: Path) -> None:
    """The umask's modes for everything under ``directory`` (libraries write some files through private
    temporaries, which keep mode 0600)."""
    mask = current_umask()
    for path in directory.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def os_error_in(err: BaseException) -> OSError | None:
    """The operating system's error behind ``err``: itself, or one that a library (safetensors, tokenizers)
    reported in its message as ``(os error N)``."""
    if isinstance(err, OSError):
        return err
    found = re.search(r"\(os error (\d+)\)", str(err))
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None
