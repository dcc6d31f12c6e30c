"""The fast paths compute the same function as the plain model: the cheaper CPU dropout (same model without
drops, same drop rate, expectation-preserving scale, masked gradients, torch's seeded generator), the first-position
last layer (same logits and gradients) and the resident embedding gradient (same gradient, memory kept)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightbert.fastpath import (
    CpuDropout,
    GeluThenLinear,
    drop_threshold,
    dropout,
    keep_mask,
    use_cpu_dropout,
    use_first_position_only,
    use_gelu_recompute,
    use_resident_embedding_gradient,
)


def classifier(base, **dropouts):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=3, **dropouts)


def padded_batch(base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    texts = ["good", "the film was very dull and the plot was quite grim", "a lovely story"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt")), torch.tensor([0, 1, 2])


NO_DROP = 1e-9  # rounds to a threshold of 0: the switched model drops nothing, and PyTorch's almost surely nothing
FAST_PATHS = {
    "cpu_dropout": use_cpu_dropout,
    "first_position_only": use_first_position_only,
    "resident_embedding_gradient": use_resident_embedding_gradient,
    "gelu_recompute": use_gelu_recompute,
}


def assert_same_loss_and_gradients(arch, request, *switches, steps=1, autocast=False, tolerance=1e-6):
    base = request.getfixturevalue(arch)
    names = (
        ("dropout", "attention_dropout", "seq_classif_dropout")
        if arch == "tiny_distilbert"
        else ("hidden_dropout_prob", "attention_probs_dropout_prob")
    )
    plain = classifier(base, **{name: NO_DROP for name in names}).train()
    switched = copy.deepcopy(plain)
    for switch in switches:
        assert switch(switched)
    inputs, labels = padded_batch(base)
    inputs = {k: v for k, v in inputs.items() if k != "token_type_ids" or arch == "tiny_bert"}
    for _ in range(steps):  # more than one step: gradients accumulate
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            expected, actual = plain(**inputs, labels=labels), switched(**inputs, labels=labels)
        torch.testing.assert_close(actual.logits, expected.logits, atol=tolerance, rtol=0)
        expected.loss.backward()
        actual.loss.backward()
    for (name, p), q in zip(plain.named_parameters(), switched.parameters(), strict=True):
        assert q.grad.dtype == p.dtype, name
        torch.testing.assert_close(q.grad, p.grad, atol=tolerance, rtol=0, msg=name)


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_distilbert", "tiny_roberta"])
@pytest.mark.parametrize("fast_path", list(FAST_PATHS))
def test_fast_path_computes_the_same_loss_and_gradients_on_padded_batches(arch, fast_path, request):
    assert_same_loss_and_gradients(arch, request, FAST_PATHS[fast_path])


def test_all_fast_paths_together_compute_the_same_accumulated_gradients(request):
    assert_same_loss_and_gradients("tiny_bert", request, *FAST_PATHS.values(), steps=2)


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_distilbert"])
@pytest.mark.parametrize("fast_path", list(FAST_PATHS))
def test_fast_path_under_bf16_autocast_has_the_gradients_of_the_plain_model_under_autocast(arch, fast_path, request):
    # bf16-mixed training: the recomputing backward passes must run their products in the forward pass's dtypes
    # (mixing bf16 activations with fp32 weights is an error) and return gradients in the parameters' dtype.
    assert_same_loss_and_gradients(arch, request, FAST_PATHS[fast_path], autocast=True, tolerance=2e-2)


def test_switched_model_in_eval_mode_is_bitwise_the_original(tiny_bert):
    plain = classifier(tiny_bert).eval()
    switched = copy.deepcopy(plain)
    use_cpu_dropout(switched)
    use_gelu_recompute(switched)
    inputs, _ = padded_batch(tiny_bert)
    with torch.inference_mode():
        assert torch.equal(switched(**inputs).logits, plain(**inputs).logits)


def test_switching_keeps_the_state_dict_and_the_saved_config(tiny_bert):
    plain = classifier(tiny_bert)
    switched = copy.deepcopy(plain)
    use_cpu_dropout(switched)
    use_gelu_recompute(switched)
    assert switched.state_dict().keys() == plain.state_dict().keys()
    assert switched.config.to_json_string() == plain.config.to_json_string()
    assert all(type(m) is not nn.Dropout for m in switched.modules())
    assert sum(isinstance(m, nn.Dropout) for m in switched.modules()) == sum(
        isinstance(m, nn.Dropout) for m in plain.modules()
    )


def test_attention_probabilities_are_dropped_in_training_only(tiny_bert):
    model = classifier(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    use_cpu_dropout(model)
    inputs, _ = padded_batch(tiny_bert)
    model.train()
    assert not torch.equal(model(**inputs).logits, model(**inputs).logits)
    model.eval()
    assert torch.equal(model(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_is_dropped_with_probability_p_in_every_lane(p):
    kept = keep_mask(torch.Size([400_000, 4]), p)  # four 16-bit lanes per 64-bit draw: none may be biased
    rate = 1.0 - kept.float().mean(0)
    tolerance = 5 * (p * (1 - p) / 400_000) ** 0.5
    assert torch.all((rate - p).abs() < tolerance), rate
    assert abs(drop_threshold(p) / 65536 - p) < 1 / 65536


def test_kept_values_are_scaled_so_the_expectation_is_unchanged():
    x = torch.rand(1000, 100) + 1.0
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - drop_threshold(0.1) / 65536))
    assert abs(y.mean().item() - x.mean().item()) < 0.01


def test_gradient_flows_only_through_kept_elements_with_the_same_scale():
    x = torch.rand(50, 60, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    y.sum().backward()
    scale = 1 / (1 - drop_threshold(0.3) / 65536)
    torch.testing.assert_close(x.grad, (y != 0).float() * scale)


def test_attention_dropout_times_values_has_the_gradients_of_dropout_then_matmul():
    # The fused attention step recomputes the dropped probabilities in backward instead of keeping them.
    from lightbert.fastpath import _DroppedProbabilitiesTimesValues

    probs = torch.softmax(torch.randn(2, 3, 7, 7), -1).requires_grad_()
    value = torch.randn(2, 3, 7, 5, requires_grad=True)
    out_grad = torch.randn(2, 3, 7, 5)
    torch.manual_seed(3)
    fused = _DroppedProbabilitiesTimesValues.apply(probs, value, 0.3)
    fused_grads = torch.autograd.grad(fused, (probs, value), out_grad)
    torch.manual_seed(3)  # the same mask
    plain = torch.matmul(dropout(probs, 0.3), value)
    plain_grads = torch.autograd.grad(plain, (probs, value), out_grad)
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=0)
    for actual, expected in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mask_kind", ["boolean", "additive", "none"])
def test_training_attention_is_the_eager_computation_with_each_kind_of_mask(mask_kind):
    # The scale and the mask go inside one product (baddbmm's alpha and bias): same scores, same gradients.
    from lightbert.fastpath import attention_with_cpu_dropout

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 4, generator=generator, requires_grad=True) for _ in range(3))
    keep = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    keep[0, ..., 3:] = False  # the first sequence is padded after 3 tokens
    mask = {"boolean": keep, "additive": torch.where(keep, 0.0, -1e9), "none": None}[mask_kind]
    output, _ = attention_with_cpu_dropout(nn.Module(), query, key, value, mask, scaling=0.5, dropout=NO_DROP)
    scores = query @ key.transpose(2, 3) * 0.5
    if mask is not None:
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    expected = (torch.softmax(scores, -1) @ value).transpose(1, 2)
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=0)
    out_grad = torch.randn(output.shape, generator=generator)
    for actual, wanted in zip(
        torch.autograd.grad(output, (query, key, value), out_grad),
        torch.autograd.grad(expected, (query, key, value), out_grad),
        strict=True,
    ):
        torch.testing.assert_close(actual, wanted, atol=1e-6, rtol=0)


def test_the_mask_compares_four_16_bit_lanes_of_each_64_bit_draw_with_the_threshold():
    # The documented stream: seeds, checkpointed RNG states and exact resume depend on it staying the same.
    torch.manual_seed(5)
    words = torch.empty(250, dtype=torch.int64).random_(-(1 << 63), None)
    expected = words.view(torch.int16).view(10, 100) >= drop_threshold(0.1) - 32768
    torch.manual_seed(5)
    kept = keep_mask(torch.Size([10, 100]), 0.1)
    assert kept.dtype == torch.bool
    assert torch.equal(kept, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masking_rounds_as_x_times_the_scale_in_each_dtype(dtype):
    from lightbert.fastpath import _masked

    x = torch.randn(64, 48).to(dtype)
    kept = keep_mask(x.shape, 0.3)
    scale = 1 / 0.7
    assert torch.equal(_masked(x, kept, scale), torch.where(kept, x * scale, 0.0))
    assert torch.equal(_masked(x.t(), kept.t(), scale), torch.where(kept.t(), x.t() * scale, 0.0))  # strided input


def test_masks_follow_torch_manual_seed():
    torch.manual_seed(7)
    first = keep_mask(torch.Size([64, 64]), 0.1)
    torch.manual_seed(7)
    again = keep_mask(torch.Size([64, 64]), 0.1)
    second = keep_mask(torch.Size([64, 64]), 0.1)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_evaluation_and_zero_probability_are_the_identity():
    x = torch.randn(8, 8)
    assert dropout(x, 0.1, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    module = CpuDropout(0.1).eval()
    assert module(x) is x


def test_probability_one_drops_everything():
    assert torch.count_nonzero(dropout(torch.ones(10, 10), 1.0, training=True)) == 0


def test_first_position_only_needs_a_head_that_reads_only_the_first_position(tiny_bert):
    from transformers import AutoModel, AutoModelForTokenClassification

    assert not use_first_position_only(AutoModelForTokenClassification.from_pretrained(str(tiny_bert), num_labels=3))
    assert not use_first_position_only(AutoModel.from_pretrained(str(tiny_bert)))


def test_first_position_only_is_applied_once(tiny_bert):
    model = classifier(tiny_bert).eval()
    assert use_first_position_only(model) and use_first_position_only(model)
    assert len(model.bert.encoder.layer[-1].attention._forward_hooks) == 1  # switching again adds no second cut
    inputs, _ = padded_batch(tiny_bert)
    assert model.base_model(**inputs).last_hidden_state.shape[1] == 1


@pytest.mark.parametrize("activation", ["gelu_new", "relu", "gelu_python"])
def test_gelu_recompute_leaves_other_activations_alone(tiny_bert, activation):
    model = classifier(tiny_bert, hidden_act=activation)
    assert use_gelu_recompute(model) == 0
    assert not any(isinstance(m, GeluThenLinear) for m in model.modules())


def test_gelu_recompute_keeps_the_gelu_input_only(tiny_bert):
    # One saved tensor fewer per feed-forward block: the GELU output is not kept for the backward pass.
    def saved_elements(model):
        inputs, labels = padded_batch(tiny_bert)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**inputs, labels=labels)
        return total

    plain = classifier(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    switched = copy.deepcopy(plain)
    use_gelu_recompute(switched)
    inputs, _ = padded_batch(tiny_bert)
    batch, length = inputs["input_ids"].shape
    layers, intermediate = plain.config.num_hidden_layers, plain.config.intermediate_size
    assert saved_elements(plain) - saved_elements(switched) == layers * batch * length * intermediate


def test_resident_embedding_gradient_reuses_one_buffer_and_skips_the_padding_row(tiny_bert):
    model = classifier(tiny_bert).train()
    assert use_resident_embedding_gradient(model)
    weight = model.get_input_embeddings().weight
    inputs, labels = padded_batch(tiny_bert)
    model(**inputs, labels=labels).loss.backward()
    first = weight.grad
    assert torch.count_nonzero(first[model.config.pad_token_id]) == 0
    model.zero_grad(set_to_none=True)
    model(**inputs, labels=labels).loss.backward()
    assert weight.grad.data_ptr() == first.data_ptr()


def test_resident_embedding_gradient_leaves_inference_to_the_plain_lookup(tiny_bert):
    model = classifier(tiny_bert).eval()
    use_resident_embedding_gradient(model)
    inputs, _ = padded_batch(tiny_bert)
    with torch.inference_mode():
        out = model(**inputs).logits
    assert not out.requires_grad


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_first_position_only_computes_the_last_layers_first_query_only(tiny_bert, implementation):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=3, attn_implementation=implementation
    ).eval()
    plain = copy.deepcopy(model)
    assert use_first_position_only(model)
    attention = model.bert.encoder.layer[-1].attention.self
    lengths = {}

    def record(name):
        def hook(module, args, output):
            lengths[name] = args[0].shape[1]

        return hook

    for name in ("query", "key"):
        getattr(attention, name).register_forward_hook(record(name))
    inputs, _ = padded_batch(tiny_bert)
    with torch.inference_mode():
        torch.testing.assert_close(model(**inputs).logits, plain(**inputs).logits, atol=1e-6, rtol=0)
    assert lengths == {"query": 1, "key": inputs["input_ids"].shape[1]}
