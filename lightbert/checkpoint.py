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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightbert.errors import LightbertError

FORMAT_VERSION = 1
SECTION = "lightbert"


def versions() -> dict[str, str]:
    import lightning
    import transformers

    from lightbert import __version__

    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"lightbert": str(__version__), "torch": str(torch.__version__),
            "transformers": str(transformers.__version__), "lightning": str(lightning.__version__)}


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
    raise TypeError(f"{where} holds a {type(value).__module__}.{type(value).__qualname__}, which weights_only loading refuses")


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
            raise LightbertError(f"checkpoint names a tokenizer file outside its directory: {name!r}", "the file is corrupt or hostile; do not use it")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content.numpy().tobytes())


def tokenizer_from_files(files: dict[str, Any]) -> Any:
    from lightbert.data import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(files, tmp)
        return load_tokenizer(tmp)


# -- RNG state --------------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) RNG states, in weights_only-safe form."""
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(int(x) for x in python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
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
        "metrics": dict(metrics or {}),
    }
    check_weights_only_safe(section, "checkpoint['lightbert']")
    return section


def unsafe_pickle_error(path: str | Path, err: Exception) -> LightbertError:
    """The error for a pickle that ``weights_only`` loading refused, naming the object it wanted to build."""
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    what = f"a {match.group(1)} object" if match else "objects beyond tensors and plain data"
    return LightbertError(f"{path} holds {what}, which could run code when loaded; refused",
                          "use a file written by lightbert or save_pretrained, or one you made yourself")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a ``.ckpt`` with ``weights_only=True`` on the CPU; a file that needs more is refused, never run."""
    text = str(path)
    if "://" in text:
        raise LightbertError(f"checkpoint paths must be local files, not URLs: {text}", "download the file yourself and check where it comes from")
    path = Path(path)
    if not path.is_file():
        raise LightbertError(f"checkpoint not found: {path}", "check the path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise unsafe_pickle_error(path, err) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise LightbertError(f"{path} is not a readable checkpoint ({str(err).splitlines()[0][:120]})", "the file is truncated or not a .ckpt; use another checkpoint") from None
    if not isinstance(checkpoint, dict):
        raise LightbertError(f"{path} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__})", "use a .ckpt written by lightbert or Lightning")
    return checkpoint



def lightbert_section(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``"lightbert"`` section of a checkpoint, checked for a version this release can read."""
    section = checkpoint.get(SECTION)
    if not isinstance(section, dict) or "hf_config" not in section:
        raise LightbertError(f"{path} is not a lightbert checkpoint (it has no model config or tokenizer)", "give a .ckpt written by lightbert fit")
    version = section.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LightbertError(f"{path} has checkpoint format {version!r}; this lightbert reads up to {FORMAT_VERSION}", "upgrade lightbert")
    return section


# -- the checkpoint callback -------------------------------------------------------------------------------------------



class Checkpointing(ModelCheckpoint):
    """``ModelCheckpoint`` (best by ``val_loss`` and ``last.ckpt`` at each validation) that can also refresh
    ``last.ckpt`` every ``last_every_n_steps`` optimizer steps, so a crash loses at most that many steps.

    Lightning's own ``every_n_train_steps`` excludes ``every_n_epochs``; this keeps both: the best checkpoint is
    chosen at validations, and the step-wise last checkpoint resumes exactly (mid-epoch included).

    Args:
        last_every_n_steps: refresh last.ckpt every N optimizer steps (default: only at validations).
    """

    def __init__(self, *args: Any, last_every_n_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if last_every_n_steps is not None and last_every_n_steps < 1:
            raise LightbertError(f"last_every_n_steps must be at least 1, not {last_every_n_steps}", "pass --checkpoint.last_every_n_steps 100")
        self.last_every_n_steps = last_every_n_steps
        self._last_step_refreshed = -1

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if (
            self.last_every_n_steps
            and self.save_last
            and step > 0
            and step % self.last_every_n_steps == 0
            and step != self._last_step_refreshed
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
        ):
            self._last_step_refreshed = step
            saved_step = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            # A step save must not stop the validation at this same step from saving the best checkpoint.
            self._last_global_step_saved = saved_step
