"""Prediction: records with label names and probabilities, deterministic, batch-invariant, in input order, with
truncation reported per text; the `lightbert predict` command over texts and files; precisions and devices."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import read_jsonl, run_cli, sentiment_rows, train_checkpoint, write_csv, write_jsonl

from lightbert import load
from lightbert.devices import resolve_device
from lightbert.errors import LightbertError
from lightbert.predict import write_predictions

TEXTS = ["a good film", "bad plot and a sad story", "", "the actor was superb " * 30, "  ", "great", "cold\tgrim\nweak"]


def test_single_label_records_have_label_score_and_probabilities_in_label_order(classifier):
    records = classifier.predict(["a good film", "bad"])
    assert len(records) == 2
    for record in records:
        assert list(record["probs"]) == ["negative", "positive"]
        assert record["label"] == max(record["probs"], key=record["probs"].get)
        assert record["score"] == record["probs"][record["label"]]
        assert sum(record["probs"].values()) == pytest.approx(1.0, abs=1e-6)


def test_batched_prediction_equals_one_by_one(classifier):
    batched = torch.tensor([list(r["probs"].values()) for r in classifier.predict(TEXTS, batch_size=3)])
    single = torch.tensor([list(classifier.predict([t])[0]["probs"].values()) for t in TEXTS])
    assert (batched - single).abs().max() <= 1e-5


def test_same_input_twice_is_bitwise_equal_even_after_train_mode(classifier):
    first = classifier.logits(TEXTS)
    classifier.model.train()  # as if someone left dropout on
    try:
        second = classifier.logits(TEXTS)
        assert classifier.model.training  # the caller's mode is restored afterwards
    finally:
        classifier.model.eval()
    assert torch.equal(first, second)


def test_empty_texts_are_predicted_and_long_texts_marked_truncated(classifier):
    records = classifier.predict(["", "good", "film " * 500])
    assert [r.get("truncated", False) for r in records] == [False, False, True]
    assert all("label" in r for r in records)
    assert classifier.infer(["film " * 500, "good"]).truncated == [True, False]


def test_results_keep_input_order_whatever_the_lengths(classifier):
    texts = [("good " * n).strip() for n in (1, 9, 3, 12, 5)]
    for text, record in zip(texts, classifier.predict(texts, batch_size=2), strict=True):
        alone = classifier.predict([text])[0]
        assert record["label"] == alone["label"] and abs(record["score"] - alone["score"]) <= 1e-5


def test_multi_label_records_list_labels_above_the_threshold(tmp_path, tiny_bert):
    rows = [{"text": t, "label": ["x", "y"] if label == "1" else ["y"]} for t, label in sentiment_rows(16)]
    model = load(train_checkpoint(tiny_bert, tmp_path, write_jsonl(tmp_path / "m.jsonl", rows)))
    record = model.predict(["good film"], threshold=0.0)[0]
    assert model.task == "multi_label" and record["labels"] == ["x", "y"] and list(record["probs"]) == ["x", "y"]
    assert model.predict(["good film"], threshold=1.0)[0]["labels"] == []


def test_regression_records_have_a_score(tmp_path, tiny_bert):
    rows = [(t, f"{int(label) * 3 + 0.5}") for t, label in sentiment_rows(16)]
    model = load(train_checkpoint(tiny_bert, tmp_path, write_csv(tmp_path / "r.csv", ["text", "score"], rows)))
    assert model.task == "regression"
    [record] = model.predict(["good film"])
    assert set(record) == {"score"} and isinstance(record["score"], float)


def test_no_texts_give_no_records(classifier):
    assert classifier.predict([]) == []
    assert classifier.predict([], long_texts="chunk") == []
    assert classifier.records(torch.empty(0, 2)) == []


def test_no_texts_give_logits_of_no_rows_and_the_models_width(classifier):
    logits = classifier.logits([])
    assert logits.shape == (0, 2) and logits.dtype == torch.float32


def test_write_predictions_streams_records_and_counts_truncation(classifier):
    out = io.StringIO()
    chunks = [(["good", "film " * 500], None), (["bad"], None)]
    summary = write_predictions(classifier, chunks, out, total=3)
    assert (summary.count, summary.truncated) == (3, 1)
    records = read_jsonl(out.getvalue())
    assert [r["label"] for r in records] == [r["label"] for r in classifier.predict(["good", "film " * 500, "bad"])]


# -- the command -----------------------------------------------------------------------------------------------------


def test_predict_command_labels_texts_given_as_arguments(trained_checkpoint, classifier):
    result = run_cli("predict", trained_checkpoint, "a good film", "", "bad")
    assert result.code == 0, result.err
    expected = [r["label"] for r in classifier.predict(["a good film", "", "bad"])]
    assert [r["label"] for r in read_jsonl(result.out)] == expected


def test_predict_command_reads_text_files_and_tables_and_writes_output(trained_checkpoint, classifier, tmp_path):
    (tmp_path / "in.txt").write_text("a good film\n\nbad\n", encoding="utf-8")
    write_csv(tmp_path / "in.csv", ["id", "review"], [("1", "a good film"), ("2", ""), ("3", "bad")])
    pq.write_table(pa.table({"review": ["a good film", "", "bad"]}), tmp_path / "in.parquet")
    expected = classifier.predict(["a good film", "", "bad"])
    for source, extra in (
        ("in.txt", []),
        ("in.csv", ["--text_column", "review"]),
        ("in.parquet", ["--text_column", "0"]),
    ):
        out = tmp_path / f"{source}.jsonl"
        result = run_cli("predict", trained_checkpoint, "--input", tmp_path / source, "--output", out, *extra)
        assert result.code == 0, result.err
        assert f"wrote 3 predictions to {out}" in result.err
        got = read_jsonl(out.read_text())
        assert [r["label"] for r in got] == [r["label"] for r in expected]
        assert max(abs(g["score"] - e["score"]) for g, e in zip(got, expected, strict=True)) <= 1e-5


def test_predict_command_reports_truncation_on_stderr(trained_checkpoint):
    result = run_cli("predict", trained_checkpoint, "film " * 500, "good")
    assert result.code == 0
    assert "1 of 2 texts were longer than 64 tokens and were truncated" in result.err
    assert [r.get("truncated", False) for r in read_jsonl(result.out)] == [True, False]


def test_predict_command_refuses_to_overwrite_output(trained_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    result = run_cli("predict", trained_checkpoint, "good", "--output", out)
    assert result.code == 2 and "output file exists" in result.err
    assert out.read_text() == "precious\n"
    assert run_cli("predict", trained_checkpoint, "good", "--output", out, "--overwrite", "true").code == 0
    assert len(read_jsonl(out.read_text())) == 1


def test_predict_command_on_pairs_needs_the_second_column(tmp_path, tiny_bert):
    rows = [(t, "the film", label) for t, label in sentiment_rows(16)]
    path = write_csv(tmp_path / "p.csv", ["sentence1", "sentence2", "label"], rows)
    ckpt = train_checkpoint(tiny_bert, tmp_path / "run", path)
    unnamed = write_csv(tmp_path / "u.csv", ["first", "second"], [(t, "the film") for t, _ in sentiment_rows(5)])
    result = run_cli("predict", ckpt, "--input", unnamed, "--text_column", "first")
    assert result.code == 2 and "trained on text pairs" in result.err
    result = run_cli("predict", ckpt, "--input", unnamed, "--text_column", "first", "--text_pair_column", "second")
    assert result.code == 0, result.err
    assert len(read_jsonl(result.out)) == 5


# -- precisions ------------------------------------------------------------------------------------------------------


def test_bf16_precision_computes_the_same_function_within_tolerance(trained_checkpoint, classifier):
    bf16 = load(trained_checkpoint).set_precision("bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert torch.allclose(bf16.logits(TEXTS), classifier.logits(TEXTS), atol=5e-2)


def test_int8_predicts_the_same_labels_as_fp32_with_close_probabilities(trained_checkpoint, classifier):
    ours, theirs = classifier.predict(TEXTS), load(trained_checkpoint).set_precision("int8").predict(TEXTS)
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    assert max(abs(a["score"] - b["probs"][a["label"]]) for a, b in zip(ours, theirs, strict=True)) < 0.02


def test_int8_is_one_way_and_idempotent(trained_checkpoint):
    int8 = load(trained_checkpoint).set_precision("int8")
    assert int8.set_precision("int8").precision == "int8"
    with pytest.raises(LightbertError, match="already quantized to int8"):
        int8.set_precision("fp32")


def test_unknown_precision_names_the_choices(classifier):
    with pytest.raises(LightbertError, match=r"unknown precision 'int4'.*fp32, bf16 or int8"):
        classifier.set_precision("int4")


def test_predict_command_runs_in_int8(trained_checkpoint, classifier):
    result = run_cli("predict", trained_checkpoint, "a good film", "bad", "--precision", "int8")
    assert result.code == 0, result.err
    expected = [r["label"] for r in classifier.predict(["a good film", "bad"])]
    assert [r["label"] for r in read_jsonl(result.out)] == expected


# -- devices ---------------------------------------------------------------------------------------------------------


def pretend_gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_device_is_the_gpu_when_there_is_one_except_for_int8(monkeypatch):
    pretend_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto", precision="int8") == torch.device("cpu")


def test_auto_device_is_the_cpu_without_a_gpu(monkeypatch):
    pretend_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(
    ("device", "precision", "message"),
    [
        ("gpu", "fp32", "unknown device 'gpu'"),
        ("cuda:2", "fp32", "this machine has 2 CUDA GPU"),
        ("cuda", "int8", "int8 runs on the CPU only"),
    ],
)
def test_devices_that_do_not_exist_here_or_do_not_suit_the_precision_are_refused(
    monkeypatch, device, precision, message
):
    pretend_gpus(monkeypatch, 2)
    with pytest.raises(LightbertError, match=message):
        resolve_device(device, precision)


def test_cuda_without_a_gpu_is_refused_with_what_to_do(monkeypatch):
    pretend_gpus(monkeypatch, 0)
    with pytest.raises(LightbertError, match="no CUDA GPU") as error:
        resolve_device("cuda")
    assert error.value.hint == "use --device cpu, or a PyTorch build with CUDA"


def test_an_int8_classifier_stays_on_the_cpu(trained_checkpoint, monkeypatch):
    int8 = load(trained_checkpoint).set_precision("int8")
    pretend_gpus(monkeypatch, 1)
    with pytest.raises(LightbertError, match="int8 runs on the CPU only, not on cuda"):
        int8.to("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_prediction_on_the_gpu_equals_the_cpu_within_1e_4(trained_checkpoint, classifier):
    gpu = load(trained_checkpoint).to("cuda")
    assert gpu.device.type == "cuda"
    assert (gpu.logits(TEXTS) - classifier.logits(TEXTS)).abs().max() <= 1e-4


def test_classifier_runs_the_last_layer_for_the_first_position_only(classifier):
    ids = classifier.tokenizer(["a good film"], return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 1
    with torch.inference_mode():
        assert classifier.model.base_model(input_ids=ids).last_hidden_state.shape[1] == 1
