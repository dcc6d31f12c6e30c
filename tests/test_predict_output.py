"""What `lightbert predict` writes, and from what: the output's extension chooses JSON Lines or the input's rows with
the predictions' columns (CSV, TSV, Parquet), the same from one process or several; `-` is standard input and
output; new files are read with the columns the model was trained on; an output that is an input is refused."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    assert_one_error_line,
    read_jsonl,
    run_cli,
    sentiment_rows,
    train_checkpoint,
    write_csv,
    write_jsonl,
)

from lightbert import load
from lightbert.distributed import Processes
from lightbert.errors import LightbertError
from lightbert.predict import write_predictions
from lightbert.tables import iter_row_chunks

PREDICTED = ["label", "score", "prob_negative", "prob_positive", "truncated"]


def read_csv(path, delimiter=","):
    with open(path, newline="", encoding="utf-8") as f:
        if delimiter == "\t":
            return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return list(csv.reader(f))


def assert_predictions_match(table_rows, header, records):
    """Each row's label, score and probabilities are those of ``records`` (one per row, in order)."""
    assert len(table_rows) == len(records)
    for row, record in zip(table_rows, records, strict=True):
        cells = dict(zip(header, row, strict=True))
        assert cells["label"] == record["label"]
        assert float(cells["score"]) == pytest.approx(record["score"], abs=1e-6)
        for name, p in record["probs"].items():
            assert float(cells[f"prob_{name}"]) == pytest.approx(p, abs=1e-6)


@pytest.fixture(scope="module")
def multi_label_model(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("multi")
    rows = [{"text": t, "label": ["x", "y"] if y == "1" else ["y"]} for t, y in sentiment_rows(16)]
    return load(train_checkpoint(tiny_bert, tmp / "run", write_jsonl(tmp / "m.jsonl", rows)))


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("regression")
    rows = [(t, f"{int(y) * 3 + 0.5}") for t, y in sentiment_rows(16)]
    return load(train_checkpoint(tiny_bert, tmp / "run", write_csv(tmp / "r.csv", ["text", "score"], rows)))


# -- tables: the input's rows with the predictions ---------------------------------------------------------------------


def test_csv_output_is_each_input_row_with_its_label_score_and_a_probability_per_label(
    trained_checkpoint, classifier, tmp_path
):
    rows = [("1", "a good film", "5"), ("2", 'bad, "so" bad\non two lines', "1"), ("3", "", "3")]
    path = write_csv(tmp_path / "in.csv", ["id", "review", "stars"], rows)
    out = tmp_path / "out.csv"
    result = run_cli("predict", trained_checkpoint, "--input", path, "--output", out, "--text_column", "review")
    assert result.code == 0, result.err
    header, *body = read_csv(out)
    assert header == ["id", "review", "stars", *PREDICTED]
    assert [tuple(row[:3]) for row in body] == rows
    assert_predictions_match(body, header, classifier.predict([r[1] for r in rows]))
    assert {row[-1] for row in body} == {"false"}


def test_a_predicted_column_whose_name_the_input_has_gets_predicted_before_it(trained_checkpoint, tmp_path):
    path = write_csv(tmp_path / "in.csv", ["text", "label"], [("a good film", "positive"), ("bad", "negative")])
    out = tmp_path / "out.csv"
    assert run_cli("predict", trained_checkpoint, "--input", path, "--output", out).code == 0
    header, *body = read_csv(out)
    assert header == ["text", "label", "predicted_label", *PREDICTED[1:]]
    assert [row[1] for row in body] == ["positive", "negative"]  # the input's own labels, kept


def test_tsv_output_of_a_headerless_file_names_columns_by_position_and_keeps_every_cell(
    trained_checkpoint, classifier, tmp_path
):
    rows = [("a good film", 'he said "superb"'), ("bad plot", "it's dull")]
    path = tmp_path / "in.tsv"
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "out.tsv"
    assert run_cli("predict", trained_checkpoint, "--input", path, "--output", out).code == 0
    header, *body = read_csv(out, "\t")
    assert header == ["column_0", "column_1", *PREDICTED]
    assert [tuple(row[:2]) for row in body] == rows  # quotes are text in a TSV, as lightbert reads it
    assert_predictions_match(body, header, classifier.predict([r[0] for r in rows]))


def test_parquet_output_keeps_the_input_columns_with_their_types(trained_checkpoint, classifier, tmp_path):
    table = pa.table(
        {
            "id": pa.array([7, 8], pa.int64()),
            "text": ["a good film", "bad"],
            "tags": pa.array([["a"], []], pa.list_(pa.string())),
            "score": [0.25, None],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    assert run_cli("predict", trained_checkpoint, "--input", tmp_path / "in.parquet", "--output", out).code == 0
    written = pq.read_table(out)
    assert written.schema.names == ["id", "text", "tags", "score", "label", "predicted_score", *PREDICTED[2:]]
    assert written.select(["id", "text", "tags", "score"]).equals(table)
    assert written.schema.field("prob_positive").type == pa.float64()
    assert written.schema.field("truncated").type == pa.bool_()
    records = classifier.predict(["a good film", "bad"])
    assert written.column("label").to_pylist() == [r["label"] for r in records]
    assert written.column("prob_negative").to_pylist() == pytest.approx([r["probs"]["negative"] for r in records])


def test_a_json_lines_key_of_integers_and_floats_is_a_float_column_in_parquet(classifier, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "good", "n": 1}, {"text": "bad", "n": 2.5}, {"text": "ok"}])
    out = tmp_path / "out.parquet"
    write_predictions(classifier, iter_row_chunks(path, chunk_size=1, same_columns=True), out)  # a chunk a row
    written = pq.read_table(out)
    assert written.schema.field("n").type == pa.float64()
    assert written.column("n").to_pylist() == [1.0, 2.5, None]


def test_a_parquet_output_never_changes_a_value_to_fit_the_type_of_the_first_rows(classifier, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "good", "n": 1}, {"text": "bad", "n": "012"}])
    with pytest.raises(LightbertError, match="column 'n' of rows 2-2: string values, where the first rows have int64"):
        write_predictions(classifier, iter_row_chunks(path, chunk_size=1, same_columns=True), tmp_path / "o.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize("source", ["a text file", "arguments"])
def test_texts_without_columns_get_a_text_column(source, trained_checkpoint, classifier, tmp_path):
    texts = ["a good film", "", "bad"]
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    given = ["--input", tmp_path / "in.txt"] if source == "a text file" else texts
    out = tmp_path / "out.csv"
    assert run_cli("predict", trained_checkpoint, *given, "--output", out).code == 0
    header, *body = read_csv(out)
    assert header == ["text", *PREDICTED]
    assert [row[0] for row in body] == texts
    assert_predictions_match(body, header, classifier.predict(texts))


def test_json_lines_records_with_different_keys_give_a_table_with_every_key(classifier, tmp_path):
    records = [{"text": "good", "a": 1}, {"text": "bad", "a": 2}, {"b": True, "text": "fine"}, {"text": "dull"}]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.csv"
    write_predictions(classifier, iter_row_chunks(path, chunk_size=2, same_columns=True), out)  # b: 2nd chunk only
    header, *body = read_csv(out)
    assert header == ["text", "a", "b", *PREDICTED]
    assert [row[:3] for row in body] == [["good", "1", ""], ["bad", "2", ""], ["fine", "", "true"], ["dull", "", ""]]


@pytest.mark.parametrize("extension", [".csv", ".parquet"])
def test_multi_label_tables_have_the_predicted_labels_and_a_probability_per_label(
    extension, multi_label_model, tmp_path
):
    out = tmp_path / f"out{extension}"
    write_predictions(multi_label_model, [(["good film", "bad"], None)], out, threshold=0.0)  # every label
    if extension == ".csv":
        header, *body = read_csv(out)
        cells = [dict(zip(header, row, strict=True)) for row in body]
        assert header == ["text", "labels", "prob_x", "prob_y", "truncated"]
        assert [c["labels"] for c in cells] == ["x,y", "x,y"]
    else:
        written = pq.read_table(out)
        assert written.schema.names == ["text", "labels", "prob_x", "prob_y", "truncated"]
        assert written.column("labels").to_pylist() == [["x", "y"], ["x", "y"]]
        cells = written.to_pylist()
    expected = multi_label_model.predict(["good film", "bad"])
    assert [float(c["prob_x"]) for c in cells] == pytest.approx([r["probs"]["x"] for r in expected])


def test_regression_tables_have_the_score(regression_model, tmp_path):
    out = tmp_path / "out.csv"
    write_predictions(regression_model, [(["good film", "bad"], None)], out)
    header, *body = read_csv(out)
    assert header == ["text", "score", "truncated"]
    expected = [r["score"] for r in regression_model.predict(["good film", "bad"])]
    assert [float(row[1]) for row in body] == pytest.approx(expected)


def test_long_texts_read_in_windows_get_a_windows_column(trained_checkpoint, tmp_path):
    out = tmp_path / "out.csv"
    result = run_cli("predict", trained_checkpoint, "good", "film " * 150, "--long_texts", "chunk", "--output", out)
    assert result.code == 0, result.err
    header, *body = read_csv(out)
    assert header[-1] == "windows" and "truncated" not in header
    assert body[0][-1] == "1" and int(body[1][-1]) > 1


def test_a_tsv_cell_holding_a_tab_is_refused_and_nothing_is_written(trained_checkpoint, tmp_path):
    out = tmp_path / "out.tsv"
    result = run_cli("predict", trained_checkpoint, "good", "cold\tgrim", "--output", out)
    assert_one_error_line(result, "row 2's column 'text' holds a tab", "write .csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- which output, which input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.txt", "out.json", "out"])
def test_an_output_of_unknown_type_is_refused_before_any_work(name, tmp_path):
    result = run_cli("predict", tmp_path / "no-such-model.ckpt", "good", "--output", tmp_path / name)
    assert_one_error_line(result, "unknown output type", ".jsonl, .csv, .tsv or .parquet")  # not "model not found"
    assert not (tmp_path / name).exists()


def test_standard_input_is_read_as_lines_of_text_and_standard_output_gets_json_lines(
    trained_checkpoint, classifier, monkeypatch
):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a good film\n\nbad\n"))
    result = run_cli("predict", trained_checkpoint, "--input", "-", "--output", "-")
    assert result.code == 0, result.err
    expected = classifier.predict(["a good film", "", "bad"])
    assert [r["label"] for r in read_jsonl(result.out)] == [r["label"] for r in expected]


def test_texts_piped_through_the_command_are_read_as_utf8_lines(trained_checkpoint, classifier):
    # A real process: its own standard input and output are what is tested.
    texts = ["un film génial, good", "bad"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LC_ALL": "C", "PYTHONIOENCODING": ""}
    done = subprocess.run(
        [sys.executable, "-m", "lightbert.cli", "predict", str(trained_checkpoint), "--input", "-"],
        input="\n".join(texts).encode("utf-8") + b"\n",
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    got = [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]
    expected = classifier.predict(texts)
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-6)


def test_standard_input_has_no_columns_to_name(trained_checkpoint):
    result = run_cli("predict", trained_checkpoint, "--input", "-", "--text_column", "review")
    assert_one_error_line(result, "--input - reads lines of text", "leave out --text_column")


def test_a_pair_model_cannot_read_standard_input(pair_model, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a good film\n"))
    assert_one_error_line(run_cli("predict", pair_model, "--input", "-"), "no second text for a pair")


# -- nothing a user had is lost ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["the same path", "a symbolic link", "a hard link"])
def test_an_output_that_is_the_input_is_refused_before_any_work(how, tmp_path):
    path = write_csv(tmp_path / "in.csv", ["text"], [("a good film",), ("bad",)])
    before = path.read_bytes()
    out = path if how == "the same path" else tmp_path / "out.csv"
    if how == "a symbolic link":
        out.symlink_to(path)
    elif how == "a hard link":
        os.link(path, out)
    result = run_cli("predict", tmp_path / "no-such-model.ckpt", "--input", path, "--output", out, "--overwrite")
    assert_one_error_line(result, "is the input", "choose another --output")
    assert path.read_bytes() == before


def test_an_output_that_leads_to_the_model_is_refused(trained_checkpoint, tmp_path):
    model = shutil.copy(trained_checkpoint, tmp_path / "model.ckpt")
    (tmp_path / "out.jsonl").symlink_to(model)
    before = (tmp_path / "model.ckpt").read_bytes()
    result = run_cli("predict", model, "good", "--output", tmp_path / "out.jsonl", "--overwrite")
    assert_one_error_line(result, "is the input", str(model))
    assert (tmp_path / "model.ckpt").read_bytes() == before


# -- the columns the model was trained on ------------------------------------------------------------------------------


def pair_rows(n, seed=4):
    return [(str(i), t, "the film", "?") for i, (t, _) in enumerate(sentiment_rows(n, seed=seed))]


def test_a_model_trained_on_columns_by_position_reads_new_files_by_them_without_options(pair_model, tmp_path):
    rows = pair_rows(5)
    path = write_csv(tmp_path / "new.tsv", None, rows)
    result = run_cli("predict", pair_model, "--input", path)
    assert result.code == 0, result.err
    assert "columns of new.tsv: text 1, text_pair 2, as the model was trained" in result.err
    expected = load(pair_model).predict([r[1] for r in rows], [r[2] for r in rows])
    assert [r["score"] for r in read_jsonl(result.out)] == pytest.approx([r["score"] for r in expected], abs=1e-6)


def test_column_options_win_over_the_columns_the_model_was_trained_on(pair_model, tmp_path):
    rows = [(i, pair, text, label) for i, text, pair, label in pair_rows(5)]  # text and second text swapped
    path = write_csv(tmp_path / "swapped.tsv", None, rows)
    result = run_cli("predict", pair_model, "--input", path, "--text_column", "2", "--text_pair_column", "1")
    assert result.code == 0, result.err
    assert "as the model was trained" not in result.err
    expected = load(pair_model).predict([r[2] for r in rows], [r[1] for r in rows])
    assert [r["score"] for r in read_jsonl(result.out)] == pytest.approx([r["score"] for r in expected], abs=1e-6)


def test_a_file_with_a_header_is_read_by_its_column_names_not_by_recorded_positions(pair_model, tmp_path):
    rows = [(pair, text) for _, text, pair, _ in pair_rows(4)]  # by position, text 1 would be the first text
    path = write_csv(tmp_path / "named.csv", ["sentence2", "sentence1"], rows)
    result = run_cli("predict", pair_model, "--input", path)
    assert result.code == 0, result.err
    assert "text_pair 'sentence2' (found by its name)" in result.err
    expected = load(pair_model).predict([r[1] for r in rows], [r[0] for r in rows])
    assert [r["score"] for r in read_jsonl(result.out)] == pytest.approx([r["score"] for r in expected], abs=1e-6)


# -- several processes -------------------------------------------------------------------------------------------------


def predict_in_two_threads(monkeypatch, classifiers, path, output, chunk_size):
    """``write_predictions_in_group`` as two processes run it, here in two threads: the group's barrier and
    broadcast between the threads."""
    from lightbert import predict

    gate = threading.Barrier(2, timeout=120)
    box = []

    def broadcast(processes, value):
        if processes.is_first:
            box.append(value)
        gate.wait()
        return box[0]

    monkeypatch.setattr(predict, "barrier", lambda processes, what: gate.wait())
    monkeypatch.setattr(predict, "broadcast", broadcast)
    errors = []

    def work(rank):
        try:
            processes = Processes(rank, 2)
            predict.write_predictions_in_group(processes, classifiers[rank], path, output, chunk_size=chunk_size)
        except BaseException as err:
            errors.append(err)
            gate.abort()

    threads = [threading.Thread(target=work, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.mark.parametrize("extension", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_two_processes_write_the_file_one_process_writes(
    extension, trained_checkpoint, classifier, tmp_path, monkeypatch
):
    rows = [(str(i), text) for i, (text, _) in enumerate(sentiment_rows(7, seed=3))]
    path = write_csv(tmp_path / "in.csv", ["id", "text"], rows)
    one, two = tmp_path / f"one{extension}", tmp_path / f"two{extension}"
    write_predictions(classifier, iter_row_chunks(path, chunk_size=2, same_columns=True), one)
    predict_in_two_threads(monkeypatch, [classifier, load(trained_checkpoint)], path, two, chunk_size=2)
    assert two.read_bytes() == one.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.csv", one.name, two.name])  # no shards left
