"""Prediction on CPUs through oneDNN, with each linear layer's weight packed once and the feed-forward GELU applied
inside the matrix product that precedes it.

PyTorch multiplies fp32 matrices with MKL and bf16 ones with oneDNN, reordering the weight into oneDNN's blocked
layout at every call. ``use_packed_linears(model)`` keeps a copy of each linear layer's weight already in that layout
(made at the first prediction, made again if the weight changes) and runs prediction's products through oneDNN in
fp32 and bf16 alike (``torch.ops.mkldnn._linear_pointwise``, the kernel PyTorch's own compiler emits for frozen CPU
models). The exact GELU that follows a feed-forward block's first layer becomes that product's post-operation, so its
output is written once instead of being read and written again. On MKL's side, its fp32 kernels on AMD CPUs are the
AVX2 ones, where oneDNN uses AVX-512; ``benchmarks/predict.py`` measures what all this buys on a given machine.

Same function to float rounding, in fp32 and bf16; only while no gradient is recorded (inference mode or
``no_grad``), on the CPU, and where a probe call at first use agrees with ``torch.nn.functional.linear``. Otherwise,
and for training, the layers run as plain ``nn.Linear`` (they still are: parameters and state dict are unchanged).
Costs the packed copies' memory: one more copy of the linear layers' weights (42 MB for MiniLM in fp32).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from lightbert.fastpath import is_exact_gelu

PACKING_ROWS = 1024  # oneDNN's hint for the rows of the inputs to come; measured to matter by 1-2% at most
_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def onednn_linear_works(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build and CPU run oneDNN's packed linear kernel in ``dtype`` and it agrees with
    ``torch.nn.functional.linear`` (checked once per process)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        generator = torch.Generator().manual_seed(0)
        x, weight, bias = (torch.randn(shape, generator=generator) for shape in ((5, 24), (40, 24), (40,)))
        x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKING_ROWS)
            plain = nn.functional.linear(x, weight, bias).float()
            fused = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "").float()
            gelu = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], "none").float()
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2
        return bool(
            torch.allclose(fused, plain, atol=tolerance, rtol=tolerance)
            and torch.allclose(gelu, nn.functional.gelu(plain), atol=tolerance, rtol=tolerance)
        )
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class _PackedLinearForward:
    """The ``forward`` of a linear layer switched by ``use_packed_linears``, holding its packed weight. A deep copy or a
    pickle holds the layer (the copy's own, in a deep copy) and no packed weight: packed tensors cannot be copied."""

    def __init__(self, linear: nn.Linear) -> None:
        self.linear = linear
        self.packed: tuple[tuple[Any, ...], torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"linear": self.linear, "packed": None}

    def weight_for(self, x: torch.Tensor) -> torch.Tensor | None:
        linear = self.linear
        weight, bias = linear.weight, linear.bias
        if (
            torch.is_grad_enabled()
            or x.device.type != "cpu"
            or x.dtype != weight.dtype
            or x.dtype not in _DTYPES
            or not weight.is_contiguous()
            or (bias is not None and bias.dtype != x.dtype)
            or torch.is_autocast_enabled("cpu")
            or not onednn_linear_works(x.dtype)
        ):
            return None
        # The weight as it is now: moved, cast or updated in place, it is packed again.
        key = (weight.device, weight.dtype, tuple(weight.shape), weight.data_ptr(), weight._version)
        if self.packed is None or self.packed[0] != key:
            self.packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKING_ROWS))
        return self.packed[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.weight_for(x)
        if packed is None:
            return nn.Linear.forward(self.linear, x)
        return _packed_product(x, packed, self.linear.bias, gelu=False)


def packed_weight(linear: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The packed weight to multiply ``x`` with, for a linear layer switched by ``use_packed_linears``; None where the
    plain ``nn.Linear`` must run (not switched, training, another device or dtype, no oneDNN kernel)."""
    forward = linear.__dict__.get("forward")
    return forward.weight_for(x) if isinstance(forward, _PackedLinearForward) else None


def _packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1]).contiguous()  # oneDNN is very slow on rows with gaps between them
    if gelu:
        out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "gelu", [], "none")  # "none": the exact (erf) GELU
    else:
        out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])


def _linear_then_activation(linear: nn.Module, activation: Any, x: torch.Tensor) -> torch.Tensor:
    """``activation(linear(x))``, in one packed product where the linear layer is packed and the activation is the
    exact GELU; otherwise (an int8 layer in its place, another activation, training, hooks on the linear layer that
    must see its call) as written."""
    hooked = isinstance(linear, nn.Module) and (linear._forward_hooks or linear._forward_pre_hooks)
    if type(linear) is nn.Linear and is_exact_gelu(activation) and not hooked:
        packed = packed_weight(linear, x)
        if packed is not None:
            return _packed_product(x, packed, linear.bias, gelu=True)
    return activation(linear(x))


class _IntermediateForward:
    """``forward`` of a BERT-style ``intermediate`` block: its linear layer and GELU through one product."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        block: Any = self.block
        return _linear_then_activation(block.dense, block.intermediate_act_fn, hidden)


class _FeedForwardChunk:
    """``ff_chunk`` of DistilBERT's ``FFN``: its first linear layer and GELU through one product."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        block: Any = self.block
        return block.dropout(block.lin2(_linear_then_activation(block.lin1, block.activation, hidden)))


def _fuse_feed_forward_gelu(module: Any) -> bool:
    """Route a feed-forward block's first layer and its GELU through ``_linear_then_activation`` by overriding, on the
    instance, the method that applies them: BERT-style ``intermediate.forward``, DistilBERT's ``FFN.ff_chunk``."""
    if hasattr(module, "dense") and hasattr(module, "intermediate_act_fn"):  # BertIntermediate and its kin
        module.__dict__["forward"] = _IntermediateForward(module)
        return True
    if all(hasattr(module, a) for a in ("lin1", "lin2", "activation", "dropout", "ff_chunk")):  # DistilBERT's FFN
        module.__dict__["ff_chunk"] = _FeedForwardChunk(module)
        return True
    return False


def use_packed_linears(model: nn.Module) -> int:
    """Let ``model``'s ``nn.Linear`` layers predict with packed weights and fold each feed-forward GELU into the product
    before it, in place (instance-level ``forward`` overrides that deep copies and pickles carry along); returns how
    many linear layers were switched. Classes, parameters, state dict and config are unchanged, so tools that look
    for ``nn.Linear`` (``torch.ao`` quantization, adapters) still find them."""
    switched = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            if not isinstance(module.__dict__.get("forward"), _PackedLinearForward):
                module.__dict__["forward"] = _PackedLinearForward(module)
            switched += 1
        elif not getattr(module, "_lightbert_fused_gelu", False) and _fuse_feed_forward_gelu(module):
            module.__dict__["_lightbert_fused_gelu"] = True
    return switched


def use_plain_linears(model: nn.Module) -> int:
    """Undo ``use_packed_linears``: the layers run as PyTorch's own again (and drop their packed weights). Returns how
    many linear layers were switched back."""
    overrides = (_PackedLinearForward, _IntermediateForward, _FeedForwardChunk)
    switched = 0
    for module in model.modules():
        for name in ("forward", "ff_chunk"):
            if isinstance(module.__dict__.get(name), overrides):
                switched += isinstance(module.__dict__[name], _PackedLinearForward)
                del module.__dict__[name]
        module.__dict__.pop("_lightbert_fused_gelu", None)
    return switched
