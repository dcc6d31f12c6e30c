"""Packed oneDNN linear layers compute the plain model's function when predicting (fp32 and bf16, BERT and DistilBERT),
fold the feed-forward GELU only there, leave training, the state dict and int8 quantization as they were, and pack
again when a weight changes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lightbert.packing import onednn_linear_works, packed_weight, use_packed_linears, use_plain_linears

pytestmark = pytest.mark.skipif(not onednn_linear_works(torch.float32), reason="no oneDNN linear kernel here")


def classifier(base):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=3).eval()


def batch(base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    texts = ["good", "the film was very dull and the plot was quite grim", "a lovely story"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def packed_copy(model):
    packed = copy.deepcopy(model)
    assert use_packed_linears(packed) > 0
    return packed


def logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits.float()


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_distilbert"])
def test_packed_linears_predict_the_plain_models_logits_in_fp32(arch, request):
    base = request.getfixturevalue(arch)
    plain = classifier(base)
    inputs = batch(base)
    torch.testing.assert_close(logits(packed_copy(plain), inputs), logits(plain, inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not onednn_linear_works(torch.bfloat16), reason="no oneDNN bf16 linear kernel on this CPU")
@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_distilbert"])
def test_packed_linears_predict_the_plain_models_logits_in_bf16(arch, request):
    base = request.getfixturevalue(arch)
    plain = classifier(base).to(torch.bfloat16)
    inputs = batch(base)
    torch.testing.assert_close(logits(packed_copy(plain), inputs), logits(plain, inputs), atol=2e-2, rtol=2e-2)


def gelu_calls(model, inputs, grad: bool) -> int:
    calls = []
    activations = [m for m in model.modules() if type(m).__name__ == "GELUActivation"]
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in activations]
    try:
        with torch.set_grad_enabled(grad):
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return len(calls)


def test_the_feed_forward_gelu_runs_inside_the_product_when_predicting_only(tiny_bert):
    packed = packed_copy(classifier(tiny_bert))
    inputs = batch(tiny_bert)
    assert gelu_calls(packed, inputs, grad=False) == 0
    assert gelu_calls(packed, inputs, grad=True) == packed.config.num_hidden_layers


def test_training_through_packed_linears_gives_the_plain_models_gradients(tiny_bert):
    plain = classifier(tiny_bert)
    packed = packed_copy(plain)
    inputs, labels = batch(tiny_bert), torch.tensor([0, 1, 2])
    for model in (plain, packed):
        model(**inputs, labels=labels).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), packed.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_packing_leaves_the_state_dict_as_it_was(tiny_bert):
    plain = classifier(tiny_bert)
    packed = packed_copy(plain)
    logits(packed, batch(tiny_bert))  # packs
    before, after = plain.state_dict(), packed.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_a_weight_changed_in_place_is_packed_again(tiny_bert):
    plain = classifier(tiny_bert)
    packed = packed_copy(plain)
    inputs = batch(tiny_bert)
    logits(packed, inputs)
    with torch.no_grad():
        for model in (plain, packed):
            model.classifier.weight.mul_(3.0)
            model.bert.encoder.layer[0].intermediate.dense.weight.mul_(50.0)
    torch.testing.assert_close(logits(packed, inputs), logits(plain, inputs), atol=1e-5, rtol=1e-5)


def test_a_deep_copy_of_a_packed_model_runs_its_own_layers(tiny_bert):
    packed = packed_copy(classifier(tiny_bert))
    inputs = batch(tiny_bert)
    original = logits(packed, inputs)
    twin = copy.deepcopy(packed)
    with torch.no_grad():
        twin.classifier.weight.mul_(3.0)
    torch.testing.assert_close(logits(twin, inputs), logits(packed, inputs) * 3, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits(packed, inputs), original, atol=0, rtol=0)
    intermediate = twin.bert.encoder.layer[0].intermediate
    assert intermediate.forward.block is intermediate


def test_without_the_kernel_the_layers_run_as_plain_linear(monkeypatch):
    import lightbert.packing as packing

    monkeypatch.setattr(packing, "onednn_linear_works", lambda dtype: False)
    layer = nn.Sequential(nn.Linear(4, 3))
    use_packed_linears(layer)
    x = torch.ones(2, 4)
    with torch.inference_mode():
        assert packed_weight(layer[0], x) is None
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer[0].weight, layer[0].bias))


def test_packed_layers_are_still_nn_linear_for_other_tools(tiny_bert):
    from torch.ao.quantization import quantize_dynamic

    plain = classifier(tiny_bert)
    packed = packed_copy(plain)
    assert [type(m) for m in packed.modules()] == [type(m) for m in plain.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        quantized = quantize_dynamic(packed, {nn.Linear}, dtype=torch.qint8)
    assert not any(type(m) is nn.Linear for m in quantized.modules())


def test_int8_quantization_of_a_packed_model_keeps_each_feed_forward_gelu(tiny_bert):
    from lightbert.quantize import quantize_int8

    plain = classifier(tiny_bert)
    packed = packed_copy(plain)
    inputs = batch(tiny_bert)
    for model in (plain, packed):
        quantize_int8(model, lambda model=model: logits(model, inputs))
    torch.testing.assert_close(logits(packed, inputs), logits(plain, inputs), atol=1e-4, rtol=1e-4)


def test_use_plain_linears_undoes_the_packing(tiny_bert):
    packed = packed_copy(classifier(tiny_bert))
    inputs = batch(tiny_bert)
    logits(packed, inputs)
    assert use_plain_linears(packed) == sum(type(m) is nn.Linear for m in packed.modules())
    assert all("forward" not in m.__dict__ and "ff_chunk" not in m.__dict__ for m in packed.modules())
    assert gelu_calls(packed, inputs, grad=False) == packed.config.num_hidden_layers
