"""Tasks and labels: the task inferred from the labels, label names in a stable order, targets, clear errors."""

from __future__ import annotations

import pytest

from lightbert.errors import LightbertError
from lightbert.labels import LabelEncoder, infer_task


@pytest.mark.parametrize(
    ("labels", "task"),
    [
        (["0", "1", "1"], "single_label"),
        (["World", "Sports"], "single_label"),
        ([1, 0, 2], "single_label"),
        (["3.800", "5.000"], "regression"),
        ([0.5, 1.25], "regression"),
        ([["a", "b"], ["c"]], "multi_label"),
    ],
)
def test_task_is_inferred_from_labels(labels, task):
    assert infer_task(labels) == task


def test_delimited_labels_are_multi_label():
    encoder = LabelEncoder.fit(["sports,politics", "science", ""], delimiter=",")
    assert encoder.task == "multi_label"
    assert encoder.labels == ["politics", "science", "sports"]
    assert encoder.encode(["sports,politics", "science", ""], "x").tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]


def test_integer_labels_sort_numerically():
    assert LabelEncoder.fit(["10", "2", "1"]).labels == ["1", "2", "10"]


def test_explicit_label_order_is_kept_and_unknown_labels_refused():
    encoder = LabelEncoder.fit(["pos", "neg"], labels=["pos", "neg"])
    assert encoder.encode(["neg", "pos"], "x").tolist() == [1, 0]
    with pytest.raises(LightbertError, match="labels the model does not know: 1 label: neutral"):
        encoder.encode(["neutral"], "val.csv")


def test_mixed_numeric_and_text_labels_are_refused():
    with pytest.raises(LightbertError, match="mixes numeric and text labels"):
        LabelEncoder.fit(["1", "positive"])


def test_nan_regression_target_is_refused():
    encoder = LabelEncoder.fit(["1.5", "2.5"])
    with pytest.raises(LightbertError, match="row 2 has regression target 'nan'"):
        encoder.encode(["1.0", "nan"], "train.csv")
