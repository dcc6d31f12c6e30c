"""Where prediction runs: the one place that decides and checks devices (``--device``, ``Classifier.to``)."""

from __future__ import annotations

import torch

from lightbert.errors import LightbertError, note


def resolve_device(device: str | torch.device = "auto", precision: str = "fp32") -> torch.device:
    """The device to predict on: ``auto`` is the first GPU (CUDA, else Apple MPS) when there is one, else the CPU
    (always the CPU for ``int8``, which runs there only); ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked to
    exist on this machine, and to suit ``precision``."""
    name = str(device)
    if name == "auto":
        if precision == "int8":
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise LightbertError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise LightbertError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise LightbertError(
                f"device {name!r} asked for, but this machine has no CUDA GPU that PyTorch can use",
                "use --device cpu, or a PyTorch build with CUDA",
            )
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= count:
            raise LightbertError(
                f"device {name!r} asked for, but this machine has {count} CUDA GPU(s)",
                f"use cuda:0 to cuda:{count - 1}",
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise LightbertError(f"device {name!r} asked for, but Apple MPS is not available here", "use --device cpu")
    if precision == "int8" and resolved.type != "cpu":
        raise LightbertError(f"int8 runs on the CPU only, not on {name}", "use --precision bf16 or fp32 on a GPU")
    return resolved


def has_bf16_arithmetic() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AVX512-BF16 or AMX). Without either, oneDNN
    emulates bf16 and is several times slower than fp32. True where PyTorch cannot tell (no warning then)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    known = [check for check in checks if callable(check)]
    return not known or any(check() for check in known)


def warn_if_bf16_is_slow(device: str | torch.device) -> None:
    """Say in one line (first process only) that bf16 on ``device`` runs slower than fp32, when it is a CPU without
    bf16 arithmetic; the run carries on."""
    if torch.device(device).type == "cpu" and not has_bf16_arithmetic():
        note(
            "warning: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX), so bf16 runs slower than fp32 here;"
            " carrying on (fp32 is the faster choice on this machine)"
        )
