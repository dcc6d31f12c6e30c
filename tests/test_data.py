"""Specification of lightbert.data: reading tables, labels and tasks, tokenizing, sampling, batching."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import sentiment_rows, write_csv, write_jsonl

from lightbert.data import (
    LabelEncoder,
    LengthGroupedSampler,
    PaddingCollator,
    infer_task,
    read_table,
    select_columns,
)
from lightbert.datamodule import ClassificationDataModule
from lightbert.errors import LightbertError

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
    assert encoder.names == ["Business", "Sci/Tech", "Sports", "World"]
    assert any('"' in t for t in texts)  # quotes are text in GLUE-style TSV, not field delimiters


def test_reads_stsb_glue_layout_as_pair_regression(shared_data):
    table = read_table(shared_data / "stsb" / "train.tsv")
    assert table.shape == (4249, 10)
    texts, pairs, labels = select_columns(table, "stsb", text_column=7, text_pair_column=8, label_column=9)
    assert texts[0] == "A plane is taking off." and pairs[0] == "An air plane is taking off."
    encoder = LabelEncoder.fit(labels)
    assert encoder.task == "regression" and encoder.names is None
    targets = encoder.encode(labels, "stsb")
    assert targets.dtype == torch.float32 and 0.0 <= targets.min() and targets.max() <= 5.0


# -- formats and columns --------------------------------------------------------------------------------------------


def test_csv_jsonl_and_parquet_read_the_same_rows(tmp_path):
    rows = [("a good film", "1"), ("a bad film", "0")]
    csv_table = read_table(write_csv(tmp_path / "d.csv", ["text", "label"], rows))
    jsonl_table = read_table(write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": int(l)} for t, l in rows]))
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [int(l) for _, l in rows]}), tmp_path / "d.parquet")
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
    assert select_columns(table, path, text_column=1, label_column=2) == select_columns(table, path, "sentence", None, "label")


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

    code = ("import sys, lightbert.data, lightbert.datamodule, lightbert.predict;"
            "sys.exit('pandas' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- tasks and labels ---------------------------------------------------------------------------------------------------


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
    assert encoder.names == ["politics", "science", "sports"]
    assert encoder.encode(["sports,politics", "science", ""], "x").tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]


def test_integer_labels_sort_numerically():
    assert LabelEncoder.fit(["10", "2", "1"]).names == ["1", "2", "10"]


def test_explicit_label_order_is_kept_and_unknown_labels_refused():
    encoder = LabelEncoder.fit(["pos", "neg"], names=["pos", "neg"])
    assert encoder.encode(["neg", "pos"], "x").tolist() == [1, 0]
    with pytest.raises(LightbertError, match="labels the model does not know: neutral"):
        encoder.encode(["neutral"], "val.csv")


def test_mixed_numeric_and_text_labels_are_refused():
    with pytest.raises(LightbertError, match="mixes numeric and text labels"):
        LabelEncoder.fit(["1", "positive"])


def test_nan_regression_target_is_refused():
    encoder = LabelEncoder.fit(["1.5", "2.5"])
    with pytest.raises(LightbertError, match="row 2 has regression target 'nan'"):
        encoder.encode(["1.0", "nan"], "train.csv")


def test_task_can_be_set_explicitly(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [("good", "1"), ("bad", "0"), ("ok", "2")])
    dm = ClassificationDataModule(train=str(path), validation=str(path), task="regression", tokenizer=str(tiny_bert))
    dm.setup("fit")
    assert dm.task == "regression" and dm.datasets["train"].targets.dtype == torch.float32


# -- the data module ----------------------------------------------------------------------------------------------------


def test_validation_labels_unseen_in_training_are_an_error(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "t.csv", ["text", "label"], [("good", "pos"), ("bad", "neg")])
    val = write_csv(tmp_path / "v.csv", ["text", "label"], [("meh", "neutral")])
    dm = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert))
    with pytest.raises(LightbertError, match="v.csv has labels the model does not know: neutral"):
        dm.setup("fit")


def test_seeded_validation_split_is_reproducible_and_disjoint(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "t.csv", ["text", "label"], sentiment_rows(50))

    def split(seed):
        dm = ClassificationDataModule(train=str(path), val_fraction=0.2, seed=seed, tokenizer=str(tiny_bert))
        dm.setup("fit")
        return dm.datasets["train"].features["input_ids"], dm.datasets["validation"].features["input_ids"]

    train_a, val_a = split(1)
    train_b, val_b = split(1)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 10 and len(train_a) == 40
    assert split(2)[1] != val_a


def test_text_pairs_are_tokenized_as_pairs_with_segment_ids(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "p.csv", ["sentence1", "sentence2", "label"], [("good film", "bad plot", "1.5"), ("a", "b", "2.0")])
    dm = ClassificationDataModule(train=str(path), validation=str(path), tokenizer=str(tiny_bert))
    dm.setup("fit")
    features = dm.datasets["train"].features
    assert dm.has_pairs and dm.task == "regression"
    # [CLS] good film [SEP] bad plot [SEP]: segment 0 for the first text, 1 for the second
    assert features["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1]


def test_max_length_is_clamped_to_the_position_limit(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [("good " * 200, "1"), ("bad", "0")])
    dm = ClassificationDataModule(train=str(path), validation=str(path), max_length=4096, tokenizer=str(tiny_bert))
    dm.setup("fit")
    assert dm.max_length == 64  # the tiny model has 64 positions
    assert max(dm.datasets["train"].lengths) == 64


def test_batches_are_padded_to_the_longest_text_not_max_length():
    collate = PaddingCollator(pad_token_id=0)
    batch = collate([{"input_ids": [2, 5, 3], "index": 0, "labels": torch.tensor(1)},
                     {"input_ids": [2, 3], "index": 1, "labels": torch.tensor(0)}])
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["index"].tolist() == [0, 1] and batch["labels"].tolist() == [1, 0]


# -- the training order ---------------------------------------------------------------------------------------------------


def test_sampler_visits_every_sample_once_per_epoch():
    sampler = LengthGroupedSampler(list(range(103)), batch_size=8, seed=0, group_size=4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert sorted(sampler) == list(range(103))


def test_sampler_is_seeded_and_reshuffles_each_epoch():
    lengths = [i % 17 for i in range(200)]
    a, b = LengthGroupedSampler(lengths, 8, seed=3), LengthGroupedSampler(lengths, 8, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(LengthGroupedSampler(lengths, 8, seed=4)) != list(b)


def test_sampler_groups_similar_lengths_into_batches():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(800)]
    order = list(LengthGroupedSampler(lengths, batch_size=16, seed=0))
    spread = [max(lengths[i] for i in order[b:b + 16]) - min(lengths[i] for i in order[b:b + 16]) for b in range(0, 800, 16)]
    assert sum(spread) / len(spread) < 15  # a random order would spread ~90 tokens within a batch


def test_sampler_puts_the_longest_text_in_the_first_batch_of_every_epoch():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(803)]
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=0, group_size=5)
    for epoch in range(4):  # a batch too big for memory fails at the first step, not later
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert max(lengths[i] for i in order[:16]) == max(lengths)
        assert sorted(order) == list(range(803))


def test_sampler_resumes_mid_epoch_where_it_stopped():
    sampler = LengthGroupedSampler([i % 9 for i in range(50)], batch_size=5, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume(epoch=2, samples_done=15)
    assert list(sampler) == full[15:]
    assert list(sampler) == full  # the skip applies once
    assert len(sampler) == 50  # Lightning counts the batches already done itself
