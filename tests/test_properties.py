"""Property-based tests: the data readers round-trip arbitrary valid tables, and prediction survives any text."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightbert.labels import LabelEncoder
from lightbert.tables import read_table, select_columns

# Any Unicode but surrogates (not encodable) and NUL (no text format here carries it).
ANY_CHARACTER = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TSV_CHARACTER = st.characters(
    blacklist_categories=("Cs",), blacklist_characters="\x00\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
)
LABELS = st.sampled_from(["World", "Sports", "Sci/Tech", "a b", "0", "1", "12", "ünïcode"])
PROPERTY_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def rows_of(characters):
    return st.lists(st.tuples(st.text(characters, max_size=40), LABELS), min_size=1, max_size=12)


def labels_read_back(labels):
    # Labels are compared as the model will see them: the encoder's names for each row.
    encoder = LabelEncoder("single_label", sorted({str(label).strip() for label in labels}))
    return encoder.encode(labels, "x").tolist()


def round_trip(path: Path, rows):
    texts, _, labels = select_columns(read_table(path), path)
    assert texts == [t for t, _ in rows]
    assert labels_read_back(labels) == labels_read_back([label for _, label in rows])


@PROPERTY_SETTINGS
@given(rows=rows_of(ANY_CHARACTER))
def test_csv_round_trips(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        round_trip(path, rows)


@PROPERTY_SETTINGS
@given(rows=rows_of(TSV_CHARACTER))
def test_tsv_round_trips(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.tsv"
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows), encoding="utf-8")
        round_trip(path, rows)


@PROPERTY_SETTINGS
@given(rows=rows_of(ANY_CHARACTER))
def test_jsonl_round_trips(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows), encoding="utf-8")
        round_trip(path, rows)


@PROPERTY_SETTINGS
@given(rows=rows_of(ANY_CHARACTER))
def test_parquet_round_trips(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.parquet"
        pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [label for _, label in rows]}), path)
        round_trip(path, rows)


TEXTS = st.one_of(
    st.text(ANY_CHARACTER, max_size=60),
    st.text(st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u2003"), max_size=10),  # whitespace only
    st.text(st.characters(min_codepoint=0x1, max_codepoint=0x1F), max_size=10),  # control characters
    st.text(ANY_CHARACTER, min_size=500, max_size=3000),  # far past the model's limit
)


@PROPERTY_SETTINGS
@given(texts=st.lists(TEXTS, min_size=1, max_size=6))
def test_predict_never_fails_and_answers_each_text_in_order(classifier, texts):
    records = classifier.predict(texts, batch_size=4)
    assert len(records) == len(texts)
    for text, record in zip(texts, records, strict=True):
        alone = classifier.predict([text])[0]
        assert record["label"] == alone["label"]
        assert abs(record["score"] - alone["score"]) <= 1e-5
