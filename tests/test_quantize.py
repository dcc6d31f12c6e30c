"""int8 prediction: the linear layers within int8 rounding, smoothing that takes outlier channels out of the rounding
error, the feed-forward output layers and the head kept in fp32. (On a trained model: tests/test_predict.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightbert.classifier import Classifier
from lightbert.errors import LightbertError
from lightbert.fastpath import encoder_layers
from lightbert.quantize import Int8Linear, calibration_texts, quantizable_linears, smoothing_scale
from lightbert.sources import ModelInfo

TEXTS = ["a good film", "bad plot and a sad story", "", "the actor was superb " * 30, "great", "cold grim weak"]


def test_int8_linear_computes_the_linear_layer_within_int8_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    x = torch.randn(8, 5, 64)
    reference = linear(x)
    out = Int8Linear(linear, torch.ones(64))(x)
    assert out.shape == reference.shape
    assert (out - reference).abs().max() < 0.05 * reference.abs().max()


def test_smoothing_takes_an_outlier_channel_out_of_the_rounding_error():
    torch.manual_seed(0)
    linear = nn.Linear(64, 64)
    x = torch.randn(256, 64)
    x[:, 3] *= 50  # one channel far larger than the rest, as in BERT's feed-forward inputs
    reference = linear(x)
    plain = (Int8Linear(linear, torch.ones(64))(x) - reference).abs().mean()
    smoothed = (Int8Linear(linear, smoothing_scale(x.abs().amax(dim=0)))(x) - reference).abs().mean()
    assert smoothed < plain / 3


def test_a_channel_silent_during_calibration_is_not_blown_up():
    peaks = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert smoothing_scale(peaks).min() > 0
    assert (1 / smoothing_scale(peaks)).max() <= 100


@pytest.mark.parametrize("base", ["tiny_bert", "tiny_distilbert", "tiny_roberta"])
def test_int8_quantizes_every_encoder_linear_but_the_feed_forward_output_and_keeps_the_head(base, request):
    directory = request.getfixturevalue(base)
    model = AutoModelForSequenceClassification.from_pretrained(str(directory), num_labels=2)
    info = ModelInfo(kind="huggingface", path=str(directory))
    classifier = Classifier(model, AutoTokenizer.from_pretrained(str(directory)), 64, info)
    before = classifier.logits(TEXTS)
    classifier.set_precision("int8")
    for layer in encoder_layers(classifier.model):
        kinds = [type(m) for m in layer.modules() if isinstance(m, (nn.Linear, Int8Linear))]
        assert kinds.count(Int8Linear) == 5  # query, key, value, attention output, feed-forward input
        narrowing = [m for m in layer.modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features > m.out_features) for m in narrowing] == [True]
    head = [name for name, m in classifier.model.named_modules() if isinstance(m, Int8Linear) and "layer" not in name]
    assert head == []
    assert torch.allclose(classifier.logits(TEXTS), before, atol=0.05)


def test_int8_refuses_a_model_without_a_known_encoder_layout():
    with pytest.raises(LightbertError, match="int8 supports BERT-family encoders"):
        quantizable_linears(nn.Sequential(nn.Linear(4, 4)))


def test_calibration_uses_the_bundled_sentences():
    texts = calibration_texts()
    assert len(texts) == 256 and all(isinstance(t, str) and t.strip() for t in texts)
