"""Faster paths that compute the same function: cheaper CPU dropout, a last layer that computes only the position
the classification head reads, GELU outputs recomputed instead of kept, and an embedding gradient that stays in
memory between steps. ``benchmarks/fastpath.py`` measures what each buys; ``tests/test_fastpath.py`` checks that
each computes the plain model's function and gradients.

Cheaper dropout. PyTorch's CPU dropout draws one Mersenne-Twister sample per element, which costs more than the
rest of the dropout. Here one 64-bit draw from the same generator gives the keep decision for four elements (a
16-bit uniform each, compared with ``round(p * 65536)``). It is still dropout: each element is zeroed independently
with probability ``round(p * 65536) / 65536`` (within 8e-6 of ``p``) and the kept ones are scaled by the inverse
keep rate, so the expectation is unchanged; the draws come from torch's default CPU generator, so seeding,
checkpointed RNG state and exact resume work as before. The mask is applied as a product with 0/1 in the input's
dtype (vectorized), not through ``torch.where`` (which is not, on CPU). Other devices keep PyTorch's own kernels.
``use_cpu_dropout(model)`` switches a Hugging Face model's ``nn.Dropout`` modules and its attention-probability
dropout (through the ``AttentionInterface``) to this kernel; evaluation paths are untouched.

First position only in the last layer. BERT, RoBERTa and DistilBERT sequence classifiers read only the first
token's final hidden state. In the last layer every position still feeds the attention (keys and values), but the
feed-forward block, two thirds of the layer's work, is needed for the first position only:
``use_first_position_only(model)`` cuts the sequence to that position right after the last attention block (for
MiniLM's 6 layers, about 11% of the FLOPs); the logits are the same to float rounding. In BERT-style layers (BERT,
RoBERTa, ELECTRA) the last attention block itself computes the first position's query only (keys and values still
from every position), and its output projection, residual and LayerNorm for that position only (another 3% of
MiniLM's FLOPs, and the last layer's attention scores for one query instead of all).

GELU recomputed in backward. A feed-forward block keeps both the input and the output of its GELU for the backward
pass (batch x length x 4 hidden floats each). ``use_gelu_recompute(model)`` folds the GELU into the following linear
layer, which keeps the GELU input only and recomputes its output in backward.

Resident embedding gradient. The word-embedding gradient (vocabulary x hidden, 47 MB for MiniLM) is a fresh
allocation at every backward pass, and a fresh allocation that large means page faults on first touch.
``use_resident_embedding_gradient(model)`` accumulates it into a buffer kept between steps instead (the same
``index_add_`` PyTorch's own backward does). It writes ``weight.grad`` directly, bypassing autograd hooks, so it is
for single-process training only.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

ATTENTION_NAME = "lightbert_cpu_dropout"
_RESOLUTION = 1 << 16  # keep decisions are 16-bit uniforms


def drop_threshold(p: float) -> int:
    """The number of the 65,536 16-bit values that mean "drop" for dropout probability ``p``."""
    return min(_RESOLUTION, max(0, round(p * _RESOLUTION)))


def keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A boolean mask of ``shape``, each element False (dropped) with probability ``drop_threshold(p) / 65536``."""
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64)
    words.random_(-(1 << 63), None, generator=generator)  # all 64 bits uniform (the default range skips the sign bit)
    uniforms = words.view(torch.int16)[:count].view(shape)  # signed: uniform over [-32768, 32767]
    keep = torch.empty(shape, dtype=torch.uint8)
    torch.ge(uniforms, drop_threshold(p) - (_RESOLUTION // 2), out=keep)  # into uint8: 3-4x faster than into bool
    return keep.view(torch.bool)


def _keep_scale(p: float) -> float:
    """What kept elements are multiplied by: the inverse of the actual keep rate."""
    return 1.0 / (1.0 - drop_threshold(p) / _RESOLUTION)


def _masked(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * scale`` where ``keep``, 0 elsewhere (a NaN stays NaN, as in PyTorch's dropout). The mask becomes 0/1 in
    ``x``'s dtype by a comparison and multiplies ``x``: PyTorch's CPU ``where`` is not vectorized and took 3-4 times
    as long. Multiplying by 0/1 is exact, and the scale comes last, as a scalar, so the result rounds as ``x * scale``
    does in every dtype."""
    factor = torch.empty(keep.shape, dtype=x.dtype, device=x.device)
    torch.ge(keep.view(torch.uint8), 1, out=factor)
    return factor.mul_(x).mul_(scale)


def autocast_state(tensor: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    """The autocast state a forward pass runs under on ``tensor``'s device. A custom backward runs outside autocast,
    so the matrix products it recomputes would mix bf16/fp16 activations with fp32 weights (an error) unless it
    re-enters this state, which ``torch.amp.custom_bwd`` does too, but for one device type fixed in advance."""
    device = tensor.device.type
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def autocast_as(state: tuple[str, bool, torch.dtype]) -> torch.autocast:
    device, enabled, dtype = state
    return torch.autocast(device, dtype=dtype, enabled=enabled)


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p)
        ctx.save_for_backward(keep)
        ctx.scale = _keep_scale(p)
        return _masked(x, keep, ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return _masked(grad, keep, ctx.scale), None


class _DroppedProbabilitiesTimesValues(torch.autograd.Function):
    """``dropout(probs, p) @ value`` keeping only ``probs`` (which softmax keeps for its own backward anyway), the
    boolean mask and ``value`` for the backward pass: the dropped probabilities, one float per attention score, are
    recomputed there instead of kept, which saves a tensor of batch x heads x length^2 floats per layer."""

    @staticmethod
    def forward(ctx: Any, probs: torch.Tensor, value: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(probs.shape, p)
        ctx.save_for_backward(probs, keep, value)
        ctx.scale = _keep_scale(p)
        ctx.autocast = autocast_state(probs)
        return torch.matmul(_masked(probs, keep, ctx.scale), value)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        probs, keep, value = ctx.saved_tensors
        with autocast_as(ctx.autocast):
            grad_value = torch.matmul(_masked(probs, keep, ctx.scale).transpose(-2, -1), grad)
            grad_probs = _masked(torch.matmul(grad, value.transpose(-2, -1)), keep, ctx.scale)
        return grad_probs.to(probs.dtype), grad_value.to(value.dtype), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with the cheaper mask on CPU (other devices: PyTorch's own)."""
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or drop_threshold(p) >= _RESOLUTION:
        return nn.functional.dropout(x, p, training)
    return _CpuDropout.apply(x, p)


class CpuDropout(nn.Dropout):
    """``nn.Dropout`` using the cheaper CPU mask (a subclass, so code looking for dropout modules still finds it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def attention_with_cpu_dropout(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention for the ``AttentionInterface``: while training on CPU with dropout, the eager computation with the
    cheaper mask on the attention probabilities (PyTorch's SDPA uses this same math path on CPU when dropout is
    on), keeping one fewer score-sized tensor for the backward pass; otherwise PyTorch's SDPA, exactly as the
    ``sdpa`` implementation."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward  # a sys.modules lookup after the first

    if dropout <= 0.0 or query.device.type != "cpu" or kwargs.get("is_causal") or getattr(module, "is_causal", False):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    batch, heads, queries, size = query.shape
    keys = key.shape[2]
    # One product that also scales (BLAS's alpha) and adds the mask (its beta), instead of a product, a pass over the
    # scores to scale them and another to mask them, and their backward passes.
    bias = query.new_zeros(())
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            bias = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
            bias.masked_fill_(~attention_mask, torch.finfo(query.dtype).min)
        else:
            bias = attention_mask.to(query.dtype)
        bias = bias.expand(batch, heads, -1, -1).reshape(batch * heads, bias.shape[-2], keys)
    weights = torch.baddbmm(
        bias,
        query.reshape(batch * heads, queries, size),
        key.reshape(batch * heads, keys, size).transpose(1, 2),
        alpha=scaling,
    ).view(batch, heads, queries, keys)
    weights = nn.functional.softmax(weights, dim=-1)
    output = _DroppedProbabilitiesTimesValues.apply(weights, value, dropout).transpose(1, 2).contiguous()
    return output, None


def use_cpu_dropout(model: Any) -> int:
    """Switch ``model``'s dropout to the cheaper CPU kernel, in place; returns how many modules were switched.

    ``nn.Dropout`` modules become ``CpuDropout`` (same ``p``); a Transformers model whose attention goes through the
    ``AttentionInterface`` with SDPA also gets the cheaper attention-probability dropout. The weights, the state
    dict and the saved config are unchanged.
    """
    switched = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                replacement = CpuDropout(child.p)
                replacement.train(child.training)  # a new module starts in training mode
                setattr(parent, name, replacement)
                switched += 1
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa" and _can_set_attention(model):
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(ATTENTION_NAME, attention_with_cpu_dropout)
        # Without a mask function of its own name, Transformers builds no padding mask at all for it.
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
        model.set_attn_implementation(ATTENTION_NAME)
    return switched


def _can_set_attention(model: nn.Module) -> bool:
    check = getattr(model, "_can_set_attn_implementation", None)
    return bool(check and check())


# -- first position only in the last layer ------------------------------------------------------------------------

# Sequence classifiers whose head reads only the first position of the last hidden state.
_FIRST_POSITION_HEADS = {
    "BertForSequenceClassification",
    "RobertaForSequenceClassification",
    "XLMRobertaForSequenceClassification",
    "CamembertForSequenceClassification",
    "ElectraForSequenceClassification",
    "DistilBertForSequenceClassification",
}


def _first_position(module: nn.Module, args: Any, output: Any) -> Any:
    if isinstance(output, tuple):
        return (output[0][:, :1], *output[1:])
    return output[:, :1]


def encoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The transformer layers of a BERT-family model (BERT, RoBERTa, ELECTRA, DistilBERT), if the layout is known."""
    base = getattr(model, "base_model", None)
    for container in ("encoder", "transformer"):  # BERT, RoBERTa, ELECTRA / DistilBERT
        layers = getattr(getattr(base, container, None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return layers
    return None


def _last_attention_block(model: nn.Module) -> nn.Module | None:
    """The module whose output feeds the last layer's feed-forward block (and its residual), if the layout is known."""
    layers = encoder_layers(model)
    last: Any = layers[-1] if layers is not None else None
    if all(hasattr(last, a) for a in ("attention", "intermediate", "output")):
        return last.attention  # BERT, RoBERTa, ELECTRA: feeds the FFN and residual
    if all(hasattr(last, a) for a in ("sa_layer_norm", "ffn")):
        return last.sa_layer_norm  # DistilBERT: the normalised attention output
    return None


class _FirstQuerySelfAttention:
    """``forward`` of the last layer's BERT-style self-attention (an instance override): the first position's query
    against every position's keys and values, so the attention output has length 1. Anything unexpected (a cache,
    other arguments) runs the class's own forward, whose full-length output the hooks below cut to the same
    result."""

    def __init__(self, attention: nn.Module) -> None:
        self.attention = attention

    def __call__(self, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        attention: Any = self.attention
        interface = _attention_function(attention)
        if args or kwargs.get("cache") is not None or interface is None:
            return type(attention).forward(attention, hidden_states, attention_mask, *args, **kwargs)
        batch, length = hidden_states.shape[:2]
        head = attention.attention_head_size
        query = attention.query(hidden_states[:, :1]).view(batch, 1, -1, head).transpose(1, 2)
        key = attention.key(hidden_states).view(batch, length, -1, head).transpose(1, 2)
        value = attention.value(hidden_states).view(batch, length, -1, head).transpose(1, 2)
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
            attention_mask = attention_mask[:, :, :1]  # the first query's row of a (batch, 1, query, key) mask
        output, weights = interface(
            attention,
            query,
            key,
            value,
            attention_mask,
            dropout=attention.dropout.p if attention.training else 0.0,
            scaling=attention.scaling,
            **kwargs,
        )
        return output.reshape(batch, 1, -1).contiguous(), weights


def _attention_function(attention: Any) -> Any:
    """The attention function a Transformers self-attention module calls (``config._attn_implementation``)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    implementation = attention.config._attn_implementation
    if implementation in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[implementation]
    return getattr(sys.modules[type(attention).__module__], "eager_attention_forward", None)  # "eager"


def _first_position_residual(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Forward pre-hook of the last attention block's output: its residual input cut to the first position."""
    if len(args) >= 2:
        return (args[0], args[1][:, :1], *args[2:]), kwargs
    if "input_tensor" in kwargs:
        return args, {**kwargs, "input_tensor": kwargs["input_tensor"][:, :1]}
    return None


def _is_bert_style_self_attention(attention: Any) -> bool:
    config = getattr(attention, "config", None)
    return (
        all(hasattr(attention, a) for a in ("query", "key", "value", "attention_head_size", "scaling", "dropout"))
        and config is not None
        and not getattr(config, "is_decoder", False)
        and not getattr(attention, "is_causal", False)
        and getattr(config, "position_embedding_type", "absolute") in ("absolute", None)
    )


def use_first_position_only(model: nn.Module) -> bool:
    """Compute the last layer's feed-forward block for the first position only, in place (see the module doc).

    Only for the known sequence classifiers; the model's last hidden state then has length 1, so this is for
    models used through their classification output. Returns whether it applied.
    """
    block: Any = _last_attention_block(model)
    if type(model).__name__ not in _FIRST_POSITION_HEADS or block is None:
        return False
    if not getattr(block, "_lightbert_first_position", False):
        block.register_forward_hook(_first_position)
        block._lightbert_first_position = True
        self_attention, output = getattr(block, "self", None), getattr(block, "output", None)
        if (
            isinstance(self_attention, nn.Module)
            and isinstance(output, nn.Module)
            and _is_bert_style_self_attention(self_attention)
        ):
            self_attention.__dict__["forward"] = _FirstQuerySelfAttention(self_attention)
            output.register_forward_pre_hook(_first_position_residual, with_kwargs=True)
    return True


# -- GELU recomputed in backward ------------------------------------------------------------------------------------


class _GeluThenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(pre, weight)
        ctx.has_bias = bias is not None
        ctx.autocast = autocast_state(pre)
        return nn.functional.linear(nn.functional.gelu(pre), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        pre, weight = ctx.saved_tensors
        grad_pre = grad_weight = grad_bias = None
        rows = grad.reshape(-1, grad.shape[-1])
        with autocast_as(ctx.autocast):  # bf16-mixed/16-mixed: the products in the forward pass's dtype
            if ctx.needs_input_grad[1]:
                activated = nn.functional.gelu(pre)  # recomputed, instead of kept since the forward pass
                grad_weight = (rows.t() @ activated.reshape(-1, activated.shape[-1])).to(weight.dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = rows.sum(0).to(weight.dtype)
            if ctx.needs_input_grad[0]:
                grad_pre = torch.ops.aten.gelu_backward(torch.matmul(grad, weight).to(pre.dtype), pre)
        return grad_pre, grad_weight, grad_bias


class GeluThenLinear(nn.Linear):
    """``linear(gelu(x))`` that keeps only ``x`` for the backward pass (the GELU output is recomputed there)."""

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (pre.requires_grad or self.weight.requires_grad):
            return _GeluThenLinear.apply(pre, self.weight, self.bias)
        return nn.functional.linear(nn.functional.gelu(pre), self.weight, self.bias)


def is_exact_gelu(activation: Any) -> bool:
    return type(activation).__name__ == "GELUActivation" and getattr(activation, "act", None) is nn.functional.gelu


def use_gelu_recompute(model: nn.Module) -> int:
    """Fold each feed-forward block's GELU into the linear layer after it, in place (see the module doc); returns
    how many blocks were switched. Only for exact (erf) GELU in BERT-, RoBERTa-, ELECTRA- and DistilBERT-style
    layers; parameters, state dict and config are unchanged."""
    switched = 0
    module: Any
    for module in model.modules():
        if hasattr(module, "intermediate") and hasattr(module, "output"):  # BertLayer and its kin
            owner, name, linear = module.intermediate, "intermediate_act_fn", module.output.dense
        elif hasattr(module, "lin1") and hasattr(module, "lin2") and hasattr(module, "activation"):  # DistilBERT FFN
            owner, name, linear = module, "activation", module.lin2
        else:
            continue
        if is_exact_gelu(getattr(owner, name, None)) and type(linear) is nn.Linear:
            setattr(owner, name, nn.Identity())
            linear.__class__ = GeluThenLinear
            switched += 1
    return switched


# -- resident embedding gradient ----------------------------------------------------------------------------------


class _LookupWithResidentGradient(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, ids: torch.Tensor, weight: torch.Tensor, embedding: ResidentGradientEmbedding
    ) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.embedding = embedding
        return nn.functional.embedding(ids, weight, embedding.padding_idx)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        (ids,) = ctx.saved_tensors
        embedding = ctx.embedding
        weight = embedding.weight
        ids, grad = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if embedding.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
            used = ids != embedding.padding_idx
            ids, grad = ids[used], grad[used]
        with torch.no_grad():
            if weight.grad is None:
                if embedding.resident_grad is None or embedding.resident_grad.shape != weight.shape:
                    embedding.resident_grad = torch.empty_like(weight)
                weight.grad = embedding.resident_grad.zero_()
            weight.grad.index_add_(0, ids, grad.to(weight.grad.dtype))
        return None, None, None


class ResidentGradientEmbedding(nn.Embedding):
    """``nn.Embedding`` whose weight gradient accumulates into a buffer kept between steps (see the module doc)."""

    resident_grad: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and self.weight.requires_grad and self.weight.device.type == "cpu"):
            return super().forward(ids)
        return _LookupWithResidentGradient.apply(ids, self.weight, self)


def use_resident_embedding_gradient(model: nn.Module) -> bool:
    """Switch the input word embedding to ``ResidentGradientEmbedding``, in place (single-process CPU training only:
    its gradient bypasses autograd hooks such as DDP's). Returns whether it applied."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if get else None
    if (
        type(embedding) is not nn.Embedding
        or embedding.max_norm is not None
        or embedding.scale_grad_by_freq
        or embedding.sparse
    ):
        return type(embedding) is ResidentGradientEmbedding
    embedding.__class__ = ResidentGradientEmbedding  # same parameters and state dict, new forward
    return True
