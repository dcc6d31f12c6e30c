"""Reading tables: the shared data sets as published, every format, columns by name or position, clear errors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_csv, write_jsonl

from lightbert.errors import LightbertError
from lightbert.labels import LabelEncoder
from lightbert.tables import iter_text_chunks, read_table, select_columns

# -- the shared data sets, read exactly as they are -------------------------------------------------------------------


def test_reads_sst2_with_its_header(shared_data):
    table = read_table(shared_data / "sst2" / "validation.tsv")
    assert list(table.columns) == ["sentence", "label"]
    assert len(table) == 6735
    texts, pairs, labels = select_columns(table, "sst2")
    assert pairs is None and len(texts) == 6735 and set(labels) == {"0", "1"}


def test_reads_agnews_without_header_and_string_labels(shared_data):
    table = read_table(shared_data / "agnews" / "train.tsv")
    assert list(table.columns) == [0, 1]
    texts, _, labels = select_columns(table, "agnews")
    encoder = LabelEncoder.fit(labels)
    assert encoder.task == "single_label"
    assert encoder.labels == ["Business", "Sci/Tech", "Sports", "World"]
    assert any('"' in t for t in texts)  # quotes are text in GLUE-style TSV, not field delimiters


def test_reads_stsb_glue_layout_as_pair_regression(shared_data):
    table = read_table(shared_data / "stsb" / "train.tsv")
    assert len(table) == 4249 and len(table.columns) == 10
    texts, pairs, labels = select_columns(table, "stsb", text_column=7, text_pair_column=8, label_column=9)
    assert texts[0] == "A plane is taking off." and pairs[0] == "An air plane is taking off."
    encoder = LabelEncoder.fit(labels)
    assert encoder.task == "regression" and encoder.labels is None
    targets = encoder.encode(labels, "stsb")
    assert targets.dtype == torch.float32 and targets.min() >= 0.0 and targets.max() <= 5.0


# -- formats and columns ----------------------------------------------------------------------------------------------


def test_csv_jsonl_and_parquet_read_the_same_rows(tmp_path):
    rows = [("a good film", "1"), ("a bad film", "0")]
    csv_table = read_table(write_csv(tmp_path / "d.csv", ["text", "label"], rows))
    jsonl_table = read_table(write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": int(label)} for t, label in rows]))
    pq.write_table(
        pa.table({"text": [t for t, _ in rows], "label": [int(label) for _, label in rows]}), tmp_path / "d.parquet"
    )
    parquet_table = read_table(tmp_path / "d.parquet")
    for table in (csv_table, jsonl_table, parquet_table):
        texts, _, labels = select_columns(table, "d")
        assert texts == ["a good film", "a bad film"]
        assert LabelEncoder.fit(labels).encode(labels, "d").tolist() == [1, 0]


def test_csv_cells_with_quotes_and_commas_are_parsed(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [('he said "yes, really"', "pos"), ("no", "neg")])
    texts, _, _ = select_columns(read_table(path), path)
    assert texts[0] == 'he said "yes, really"'


def test_columns_by_position_and_by_name_agree(tmp_path):
    path = write_csv(tmp_path / "d.tsv", ["id", "sentence", "label"], [("1", "good", "1"), ("2", "bad", "0")])
    table = read_table(path)
    assert select_columns(table, path, text_column=1, label_column=2) == select_columns(
        table, path, "sentence", None, "label"
    )


def test_explicit_header_false_keeps_the_first_row(tmp_path):
    path = write_csv(tmp_path / "d.csv", None, [("good", "pos"), ("bad", "neg")])
    assert len(read_table(path, header=False)) == 2
    assert len(read_table(path, header=True)) == 1


def test_header_detection_treats_rows_like_the_rest_as_data(tmp_path):
    # Every row is one-word identifiers: nothing marks the first as a header.
    path = write_csv(tmp_path / "d.csv", None, [("good", "pos"), ("bad", "neg")])
    assert len(read_table(path)) == 2


def test_missing_column_is_a_clear_error(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [("good", "1")])
    with pytest.raises(LightbertError, match="no label column 'target'"):
        select_columns(read_table(path), path, label_column="target")
    with pytest.raises(LightbertError, match="no text column at position 5"):
        select_columns(read_table(path), path, text_column=5)


def test_unsupported_suffix_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(LightbertError, match="data file not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(LightbertError, match="unsupported data file type"):
        read_table(tmp_path / "d.xlsx")


def test_a_row_with_the_wrong_number_of_fields_names_its_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngood,1\nbad,0,extra\n", encoding="utf-8")
    with pytest.raises(LightbertError, match="row 2 has 3 fields, the header has 2"):
        read_table(path)


def test_a_jsonl_line_that_is_not_an_object_names_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "good", "label": 1}\n\n["bad", 0]\n', encoding="utf-8")
    with pytest.raises(LightbertError, match="line 3 is not a JSON object"):
        read_table(path)
    path.write_text('{"text": "good", "label": 1}\n{"text": "bad", \n', encoding="utf-8")
    with pytest.raises(LightbertError, match="as jsonl: line 2"):
        read_table(path)


def test_jsonl_keys_missing_from_some_lines_read_as_missing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "good", "label": 1}, {"label": 0}])
    with pytest.raises(LightbertError, match="row 2 has no text"):
        select_columns(read_table(path), path)


def test_byte_order_mark_blank_lines_and_long_cells_are_read(tmp_path):
    long_text = "word " * 60_000  # 300 kB, past the csv module's default 128 kB field limit
    path = tmp_path / "d.csv"
    path.write_text(f"\ufefftext,label\n\n{long_text},1\nshort,0\n\n", encoding="utf-8")
    table = read_table(path)
    assert table.columns == ["text", "label"]
    assert table["text"] == [long_text, "short"]


def test_repeated_header_names_stay_reachable(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "text", "label"], [("a", "b", "1")])
    assert read_table(path, header=True).columns == ["text", "text.1", "label"]


def test_reading_data_does_not_import_pandas():
    # pandas costs ~60 MiB of resident memory for the whole run; the readers use csv, json and pyarrow instead.
    import subprocess
    import sys

    code = "import sys, lightbert.tables, lightbert.datamodule, lightbert.predict; sys.exit('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- texts to predict -------------------------------------------------------------------------------------------------


def test_files_stream_in_chunks_in_order_with_true_row_numbers(tmp_path):
    rows = [(f"text {i}", "x") for i in range(10)]
    path = write_csv(tmp_path / "d.csv", ["text", "label"], rows)
    chunks = list(iter_text_chunks(path, chunk_size=3))
    assert [len(texts) for texts, _ in chunks] == [3, 3, 3, 1]
    assert [t for texts, _ in chunks for t in texts] == [t for t, _ in rows]
    records = [{"text": t} for t, _ in rows[:4]] + [{"text": None}]
    write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(LightbertError, match="row 5 has no text"):
        list(iter_text_chunks(tmp_path / "d.jsonl", chunk_size=2))


def test_text_files_are_one_text_per_line_and_have_no_pairs(tmp_path):
    (tmp_path / "t.txt").write_text("a good film\n\nbad", encoding="utf-8")
    assert list(iter_text_chunks(tmp_path / "t.txt")) == [(["a good film", "", "bad"], None)]
    with pytest.raises(LightbertError, match="plain text, which has no second text"):
        list(iter_text_chunks(tmp_path / "t.txt", paired=True))
