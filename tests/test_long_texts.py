"""Texts longer than the model's limit: `--long_texts chunk` reads them in overlapping windows and combines the
windows' logits, in predict, evaluate, serve and fit; texts within the limit are untouched."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import assert_one_error_line, fit_args, read_jsonl, run_cli, sentiment_rows, serving_api, write_csv

from lightbert import load
from lightbert.classifier import LongTexts
from lightbert.errors import LightbertError

LONG_TEXT = " ".join(f"good film number {i}, rather long" for i in range(40))  # ~240 tokens: beyond 64
SHORT_TEXTS = ["a good film", "dull", "the best film of the year, truly"]


def window_ids(classifier, text: str, stride: int) -> list[list[int]]:
    """The windows as the tokenizer cuts them: max_length tokens, consecutive ones sharing ``stride``."""
    encoded = classifier.tokenizer(
        text, truncation=True, max_length=classifier.max_length, stride=stride, return_overflowing_tokens=True
    )
    return encoded["input_ids"]


def test_texts_within_the_limit_give_exactly_the_records_of_truncate(classifier):
    assert classifier.predict(SHORT_TEXTS, long_texts="chunk") == classifier.predict(SHORT_TEXTS)


def test_a_long_text_scores_the_mean_of_its_windows_logits_and_says_how_many(classifier):
    stride = 16
    windows = window_ids(classifier, LONG_TEXT, stride)
    assert len(windows) > 2 and all(len(w) <= classifier.max_length for w in windows)
    with torch.inference_mode():
        expected = torch.stack([classifier.model(input_ids=torch.tensor([ids])).logits[0] for ids in windows]).mean(
            dim=0
        )
    inference = classifier.infer([LONG_TEXT, *SHORT_TEXTS], long_texts=LongTexts("chunk", stride))
    assert torch.allclose(inference.logits[0], expected, atol=1e-5)
    assert inference.windows == [len(windows), 1, 1, 1]
    record = classifier.predict([LONG_TEXT], long_texts="chunk", stride=stride)[0]
    assert record["windows"] == len(windows) and "truncated" not in record
    assert record["probs"] == pytest.approx(
        dict(zip(classifier.labels, torch.softmax(expected, -1).tolist(), strict=False))
    )


def test_max_takes_each_outputs_largest_logit_over_the_windows(classifier):
    windows = window_ids(classifier, LONG_TEXT, 16)
    with torch.inference_mode():
        each = torch.stack([classifier.model(input_ids=torch.tensor([ids])).logits[0] for ids in windows])
    inference = classifier.infer([LONG_TEXT], long_texts=LongTexts("chunk", 16, "max"))
    assert torch.allclose(inference.logits[0], each.max(dim=0).values, atol=1e-5)


def test_a_stride_that_leaves_no_room_is_refused(classifier):
    with pytest.raises(LightbertError, match="stride"):
        classifier.predict([LONG_TEXT], long_texts="chunk", stride=classifier.max_length)


def test_predict_and_evaluate_on_the_command_line_read_long_texts_in_windows(trained_checkpoint, tmp_path):
    records = read_jsonl(run_cli("predict", trained_checkpoint, LONG_TEXT, "a good film", "--long_texts=chunk").out)
    assert records[0]["windows"] > 1 and "windows" not in records[1] and "truncated" not in records[0]
    data = write_csv(tmp_path / "test.csv", ["text", "label"], [(LONG_TEXT, "positive"), ("dull", "negative")])
    result = run_cli("evaluate", trained_checkpoint, f"--input={data}", f"--output_dir={tmp_path / 'report'}",
                     "--long_texts=chunk")  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    expected = load(trained_checkpoint).predict([LONG_TEXT, "dull"], long_texts="chunk")
    log_loss = -sum(
        torch.tensor(r["probs"][gold]).log().item() for r, gold in zip(expected, ["positive", "negative"], strict=False)
    )
    assert report["rows"] == 2 and report["metrics"]["log_loss"] == pytest.approx(log_loss / 2, abs=1e-5)


def test_a_stride_beyond_the_window_ends_predict_with_one_error_line(trained_checkpoint):
    result = run_cli("predict", trained_checkpoint, LONG_TEXT, "--long_texts=chunk", "--stride=5000")
    assert_one_error_line(result, "stride 5000")


def test_the_server_answers_a_long_text_with_its_windows(trained_checkpoint, classifier):
    api = serving_api(trained_checkpoint, long_texts=LongTexts("chunk"))
    answer = api.encode_response(api.predict([api.decode_request({"texts": [LONG_TEXT, "dull"]})])[0])
    got = json.loads(answer.body)["predictions"]
    expected = classifier.predict([LONG_TEXT, "dull"], long_texts="chunk")
    assert got[0]["windows"] == expected[0]["windows"] > 1 and "windows" not in got[1]
    assert got[0]["probs"] == pytest.approx(expected[0]["probs"], abs=1e-5)


# -- fit -------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory):
    """Sentiment rows of 6 to 30 words; with --data.max_length 12 most take several windows."""
    tmp = tmp_path_factory.mktemp("long")
    rows = [(" ".join([text] * (1 + i % 4)), label) for i, (text, label) in enumerate(sentiment_rows(48, seed=5))]
    return (
        tmp,
        write_csv(tmp / "train.csv", ["text", "label"], rows[:36]),
        write_csv(tmp / "val.csv", ["text", "label"], rows[36:]),
    )


def test_training_on_chunks_learns_from_every_window_with_its_texts_label(tiny_bert, long_rows):
    from lightbert import ClassificationDataModule

    _, train, val = long_rows
    data = ClassificationDataModule(
        train=str(train), validation=str(val), tokenizer=str(tiny_bert), max_length=12, long_texts="chunk", stride=3
    )
    data.setup("fit")
    windows = data.datasets["train"]
    rows = train.read_text().splitlines()[1:]
    assert len(windows) > len(rows) and sorted(set(windows.documents)) == list(range(len(rows)))
    for window, document in enumerate(windows.documents):
        label = rows[document].rsplit(",", 1)[1]
        assert data.labels[int(windows.targets[window])] == label
    # Validation batches hold every window of a document together, and each document once.
    loader = data.val_dataloader()
    seen = []
    for batch in loader:
        documents = batch["document"].tolist()
        seen += sorted(set(documents))
    assert sorted(seen) == list(range(len(val.read_text().splitlines()) - 1))


def test_validation_of_a_chunked_run_scores_each_text_once_from_its_windows(tiny_bert, long_rows):
    tmp, train, val = long_rows
    chunked = ["--data.max_length=12", "--data.long_texts=chunk", "--data.stride=3", "--model.learning_rate=0.003"]
    result = run_cli(*fit_args(tiny_bert, train, val, tmp / "runs", *chunked, epochs=2))
    assert result.code == 0, result.err
    checkpoint = tmp / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    validated = run_cli("validate", f"--ckpt_path={checkpoint}", f"--data.validation={val}", *chunked[:3])
    accuracy = float(re.search(r"accuracy (\d\.\d+)", validated.out).group(1))
    rows = [line.rsplit(",", 1) for line in val.read_text().splitlines()[1:]]
    records = load(checkpoint).predict([t for t, _ in rows], long_texts="chunk", stride=3)
    assert any(r.get("windows", 1) > 1 for r in records)
    expected = sum(r["label"] == label for r, (_, label) in zip(records, rows, strict=True)) / len(rows)
    assert accuracy == pytest.approx(expected, abs=1e-4)
