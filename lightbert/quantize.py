"""int8 prediction on CPUs: dynamic int8 matrix products on smoothed inputs, the feed-forward output layers in fp32.

Plain dynamic quantization (``torch.ao``'s ``quantize_dynamic``: int8 weights per output channel, one int8 scale per
input tensor per call) changes MiniLM's SST-2 labels on 2.2% of the sentences (benchmarks/predict.py): one scale per
tensor is set by a few outlier channels (MiniLM's feed-forward input peaks at 28 in channels 62, 63 and 99, against a
median channel peak of 1.9), so every other channel keeps only a few levels. Two changes bring the agreement with
fp32 to about 99.5%:

- Smoothing (SmoothQuant, alpha = 0.75): each input channel is divided by its peak over calibration texts raised to
  0.75 and the matching weight column multiplied by the same, the same function in exact arithmetic, so the
  per-tensor scale no longer follows the outlier channels while the weights' own range grows only moderately. The
  peaks come from a fixed set of bundled texts, so they do not depend on the user's input.
- The feed-forward block's second linear layer (the only one that narrows, 4 x hidden -> hidden) stays in fp32: its
  input, the GELU output, has outlier *tokens* that no channel scale removes, and quantizing it was most of the
  remaining disagreement.

Matrix products run through PyTorch's fbgemm int8 kernels (``torch.ops.quantized.linear_dynamic``), the ones
``quantize_dynamic`` uses, called directly because that Python API is deprecated. CPU only. Each batch's inputs get
their own int8 scale, so unlike fp32 a text's probabilities can move slightly with the texts it is batched
with; the labels agree with fp32 on about 99.5% of SST-2 (benchmarks/predict.py --int8).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightbert.bundled import SST2_VALIDATION
from lightbert.errors import LightbertError
from lightbert.fastpath import encoder_layers
from lightbert.tables import read_table

CALIBRATION_TEXTS = 256  # the first sentences of the bundled SST-2 validation sample
SMOOTHING = 0.75  # SmoothQuant's alpha: 0.5, 0.75, 0.9 and 1.0 tried on MiniLM; 0.75 had the smallest logit error
_LEVELS = 127.5  # symmetric int8: the largest magnitude maps to the edge of [-128, 127], as torch.ao's observers do


class Int8Linear(nn.Module):
    """``linear`` computed in int8: weights quantized once per output channel, inputs per call (one scale per tensor)
    after each input channel is divided by ``input_scale`` (folded into the weights, so the function is unchanged)."""

    def __init__(self, linear: nn.Linear, input_scale: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float() * input_scale
        scales = (weight.abs().amax(dim=1) / _LEVELS).clamp(min=1e-12).double()
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated in PyTorch; nothing a user can act on
            qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.inverse_scale: torch.Tensor
        self.register_buffer("inverse_scale", (1.0 / input_scale).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, as quantize_dynamic uses on x86 (fbgemm's int16 accumulation cannot overflow)
        return torch.ops.quantized.linear_dynamic(x * self.inverse_scale, self.packed, True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The encoder's linear layers that run in int8: every one in the transformer layers except those that narrow
    (the feed-forward output layers). The pooler and the classification head, one position each, stay fp32."""
    layers = encoder_layers(model)
    if layers is None:
        raise LightbertError(f"int8 supports BERT-family encoders, not {type(model).__name__}", "use --precision fp32")
    inside = {id(module) for module in layers.modules()}
    return {
        name: module
        for name, module in model.named_modules()
        if id(module) in inside and isinstance(module, nn.Linear) and module.in_features <= module.out_features
    }


def calibration_texts(n: int = CALIBRATION_TEXTS) -> list[str]:
    """The first ``n`` sentences of the bundled SST-2 validation sample: fixed, so results do not depend on the
    user's input."""
    return [str(text) for text in read_table(SST2_VALIDATION)["sentence"][:n]]


def input_peaks(linears: dict[str, nn.Linear], calibrate: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """Each linear layer's largest input magnitude per channel while ``calibrate()`` runs the model."""
    peaks: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            peak = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0)
            peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak

        return hook

    handles = [linear.register_forward_hook(record(name)) for name, linear in linears.items()]
    try:
        calibrate()
    finally:
        for handle in handles:
            handle.remove()
    return peaks


def smoothing_scale(peak: torch.Tensor) -> torch.Tensor:
    """Per-channel input divisors: the channel peaks relative to their median (floored, so that a channel silent
    during calibration cannot be blown up by a large reciprocal later), to the power ``SMOOTHING``."""
    return (peak / peak.median().clamp(min=1e-12)).clamp(min=1e-2).pow(SMOOTHING)


@torch.no_grad()
def quantize_int8(model: nn.Module, calibrate: Callable[[], Any]) -> int:
    """Replace ``model``'s quantizable linear layers by ``Int8Linear`` in place, smoothed by the input peaks seen
    while ``calibrate()`` runs the model (on calibration texts); returns how many layers. The model must be on
    the CPU."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise LightbertError("int8 runs on the CPU only", "move the model to the CPU first")
    if not hasattr(torch.ops.quantized, "linear_dynamic") or "fbgemm" not in torch.backends.quantized.supported_engines:
        raise LightbertError(
            "int8 needs PyTorch's x86 int8 kernels (fbgemm), which this build or CPU lacks", "use --precision fp32"
        )
    model.float()
    linears = quantizable_linears(model)
    peaks = input_peaks(linears, calibrate)
    for name, linear in linears.items():
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, Int8Linear(linear, smoothing_scale(peaks[name])))
    return len(linears)
