"""Prediction: records with label names and probabilities, deterministic, batch-invariant, in input order;
the `lightbert predict` command over texts and files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning.pytorch as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import quiet_trainer, sentiment_rows, write_csv, write_jsonl

from lightbert import load
from lightbert.callbacks import Checkpointing
from lightbert.datamodule import ClassificationDataModule
from lightbert.errors import LightbertError
from lightbert.model import SequenceClassifier
from lightbert.predict import resolve_device

TEXTS = ["a good film", "bad plot and a sad story", "", "the actor was superb " * 30, "  ", "great", "cold\tgrim\nweak"]


def train_checkpoint(base, tmp, rows, **data_kwargs):
    pl.seed_everything(0, verbose=False)
    dm = ClassificationDataModule(train=str(rows), validation=str(rows), tokenizer=str(base), batch_size=8, **data_kwargs)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[Checkpointing(dirpath=str(tmp), save_last=True)])
    trainer.fit(SequenceClassifier(base=str(base), learning_rate=1e-3), dm)
    return tmp / "last.ckpt"


@pytest.fixture(scope="module")
def single_label(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("single")
    rows = write_csv(tmp / "t.csv", ["text", "label"], [(t, ["negative", "positive"][int(l)]) for t, l in sentiment_rows(24)])
    return train_checkpoint(tiny_bert, tmp, rows)


@pytest.fixture(scope="module")
def classifier(single_label):
    return load(single_label)


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
    second = classifier.logits(TEXTS)
    assert torch.equal(first, second)
    assert classifier.model.training  # the caller's mode is restored afterwards
    classifier.model.eval()


def test_empty_texts_are_predicted_and_long_texts_truncated_and_counted(classifier):
    records = classifier.predict(["", "good", "film " * 500])
    assert len(records) == 3 and all("label" in r for r in records)
    assert classifier.last_truncated == 1


def test_results_keep_input_order_whatever_the_lengths(classifier):
    texts = [("good " * n).strip() for n in (1, 9, 3, 12, 5)]
    by_batch = classifier.predict(texts, batch_size=2)
    for text, record in zip(texts, by_batch):
        alone = classifier.predict([text])[0]
        assert record["label"] == alone["label"] and abs(record["score"] - alone["score"]) <= 1e-5


def test_multi_label_records_list_labels_above_the_threshold(tmp_path, tiny_bert):
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": t, "label": ["x", "y"] if l == "1" else ["y"]} for t, l in sentiment_rows(16)])
    classifier = load(train_checkpoint(tiny_bert, tmp_path, path))
    record = classifier.predict(["good film"], threshold=0.0)[0]
    assert classifier.task == "multi_label" and record["labels"] == ["x", "y"] and list(record["probs"]) == ["x", "y"]
    assert classifier.predict(["good film"], threshold=1.01)[0]["labels"] == []


def test_regression_records_have_a_score(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "r.csv", ["text", "score"], [(t, f"{int(l) * 3 + 0.5}") for t, l in sentiment_rows(16)])
    classifier = load(train_checkpoint(tiny_bert, tmp_path, path))
    assert classifier.task == "regression"
    [record] = classifier.predict(["good film"])
    assert set(record) == {"score"} and isinstance(record["score"], float)


# -- the command -----------------------------------------------------------------------------------------------------


def cli(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lightbert.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_command_labels_texts_given_as_arguments(single_label, classifier):
    result = cli("predict", str(single_label), "a good film", "", "bad")
    assert result.returncode == 0, result.stderr
    records = jsonl(result.stdout)
    assert [r["label"] for r in records] == [r["label"] for r in classifier.predict(["a good film", "", "bad"])]


def test_predict_command_reads_text_files_and_tables_and_writes_output(single_label, classifier, tmp_path):
    (tmp_path / "in.txt").write_text("a good film\n\nbad\n", encoding="utf-8")
    write_csv(tmp_path / "in.csv", ["id", "review"], [("1", "a good film"), ("2", ""), ("3", "bad")])
    pq.write_table(pa.table({"review": ["a good film", "", "bad"]}), tmp_path / "in.parquet")
    expected = classifier.predict(["a good film", "", "bad"])
    for source, extra in (("in.txt", []), ("in.csv", ["--text_column", "review"]), ("in.parquet", ["--text_column", "0"])):
        out = tmp_path / f"{source}.jsonl"
        result = cli("predict", str(single_label), "--input", str(tmp_path / source), "--output", str(out), *extra)
        assert result.returncode == 0, result.stderr
        got = jsonl(out.read_text())
        assert [r["label"] for r in got] == [r["label"] for r in expected]
        assert max(abs(g["score"] - e["score"]) for g, e in zip(got, expected)) <= 1e-5


def test_predict_command_reports_truncation_on_stderr(single_label):
    result = cli("predict", str(single_label), "film " * 500, "good")
    assert result.returncode == 0
    assert "1 of 2 texts were longer than 64 tokens and were truncated" in result.stderr
    assert len(jsonl(result.stdout)) == 2


def test_predict_command_refuses_to_overwrite_output(single_label, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    result = cli("predict", str(single_label), "good", "--output", str(out))
    assert result.returncode == 2 and "output file exists" in result.stderr
    assert out.read_text() == "precious\n"
    assert cli("predict", str(single_label), "good", "--output", str(out), "--overwrite", "true").returncode == 0
    assert len(jsonl(out.read_text())) == 1


def test_predict_command_on_pairs_needs_the_second_column(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "p.csv", ["sentence1", "sentence2", "label"], [(t, "the film", l) for t, l in sentiment_rows(16)])
    ckpt = train_checkpoint(tiny_bert, tmp_path, path)
    result = cli("predict", str(ckpt), "--input", str(path), "--text_column", "sentence1")
    assert result.returncode == 2 and "trained on text pairs" in result.stderr
    result = cli("predict", str(ckpt), "--input", str(path), "--text_column", "sentence1", "--text_pair_column", "sentence2")
    assert result.returncode == 0, result.stderr
    assert len(jsonl(result.stdout)) == 16


def test_files_stream_in_chunks_in_order_with_true_row_numbers(tmp_path):
    from lightbert.predict import iter_text_chunks

    rows = [(f"text {i}", "x") for i in range(10)]
    path = write_csv(tmp_path / "d.csv", ["text", "label"], rows)
    chunks = list(iter_text_chunks(path, chunk_size=3))
    assert [len(texts) for texts, _ in chunks] == [3, 3, 3, 1]
    assert [t for texts, _ in chunks for t in texts] == [t for t, _ in rows]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in rows[:4]) + '{"text": null}\n')
    with pytest.raises(LightbertError, match="row 5 has no text"):
        list(iter_text_chunks(tmp_path / "d.jsonl", chunk_size=2))


def test_bf16_precision_computes_the_same_function_within_tolerance(single_label):
    fp32 = load(single_label)
    bf16 = load(single_label)
    bf16.set_precision("bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert torch.allclose(bf16.logits(TEXTS), fp32.logits(TEXTS), atol=5e-2)


def test_int8_predicts_the_same_labels_as_fp32_with_close_probabilities(single_label):
    fp32 = load(single_label)
    int8 = load(single_label).set_precision("int8")
    ours, theirs = fp32.predict(TEXTS), int8.predict(TEXTS)
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    assert max(abs(a["score"] - b["probs"][a["label"]]) for a, b in zip(ours, theirs)) < 0.02


def test_int8_is_one_way_and_idempotent(single_label):
    classifier = load(single_label).set_precision("int8")
    assert classifier.set_precision("int8").precision == "int8"
    with pytest.raises(LightbertError, match="already quantized to int8"):
        classifier.set_precision("fp32")


def test_unknown_precision_names_the_choices(single_label):
    with pytest.raises(LightbertError, match="unknown precision 'int4'.*fp32, bf16 or int8"):
        load(single_label).set_precision("int4")


def test_predict_command_runs_in_int8(single_label):
    result = cli("predict", str(single_label), "a good film", "bad", "--precision", "int8")
    assert result.returncode == 0, result.stderr
    assert [r["label"] for r in jsonl(result.stdout)] == [r["label"] for r in load(single_label).predict(["a good film", "bad"])]


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


@pytest.mark.parametrize(("device", "precision", "message"), [
    ("gpu", "fp32", "unknown device 'gpu'"),
    ("cuda:2", "fp32", "this machine has 2 CUDA GPU"),
    ("cuda", "int8", "int8 runs on the CPU only"),
])
def test_devices_that_do_not_exist_here_or_do_not_suit_the_precision_are_refused(monkeypatch, device, precision, message):
    pretend_gpus(monkeypatch, 2)
    with pytest.raises(LightbertError, match=message):
        resolve_device(device, precision)


def test_cuda_without_a_gpu_is_refused_with_what_to_do(monkeypatch):
    pretend_gpus(monkeypatch, 0)
    with pytest.raises(LightbertError, match="no CUDA GPU") as error:
        resolve_device("cuda")
    assert error.value.hint == "use --device cpu, or a PyTorch build with CUDA"


def test_an_int8_classifier_stays_on_the_cpu(single_label, monkeypatch):
    classifier = load(single_label).set_precision("int8")
    pretend_gpus(monkeypatch, 1)
    with pytest.raises(LightbertError, match="int8 runs on the CPU only, not on cuda"):
        classifier.to("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_prediction_on_the_gpu_equals_the_cpu_within_1e_4(single_label):
    cpu = load(single_label)
    gpu = load(single_label).to("cuda")
    assert gpu.device.type == "cuda"
    assert (gpu.logits(TEXTS) - cpu.logits(TEXTS)).abs().max() <= 1e-4


def test_classifier_runs_the_last_layer_for_the_first_position_only(classifier):
    ids = classifier.tokenizer(["a good film"], return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 1
    with torch.inference_mode():
        assert classifier.model.base_model(input_ids=ids).last_hidden_state.shape[1] == 1
