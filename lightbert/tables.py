"""Reading tables of texts (and labels): CSV, TSV, JSON Lines, Parquet and plain text, whole or in chunks.

``read_table``/``iter_tables`` turn a file into ``Table`` objects (column name -> cells), ``select_columns`` picks
the text, second-text and label columns by name or 0-based position, ``columns_for_model`` the columns to read a new
file with for a model (its training data's, when the file has them), and ``iter_row_chunks``/``iter_text_chunks``
stream texts to predict (with their rows) from a file or from standard input. Python's csv and json modules (and
pyarrow for Parquet) rather than pandas: importing pandas would keep ~60 MiB resident for the whole run. Needs
neither Lightning nor a model.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import re
import sys
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import IO, Any, NamedTuple

from lightbert.errors import LightbertError

TABLE_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Column names looked for, in order, when the user names none.
TEXT_NAMES = ("text", "sentence", "sentence1", "question", "premise", "content")
PAIR_NAMES = ("text_pair", "sentence2", "question2", "hypothesis")
LABEL_NAMES = ("label", "labels", "score", "target", "class")
_HEADER_CELL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")

STDIN = "-"  # the input path that means standard input
PROBE_ROWS = 100  # rows read to see which columns a file has

Column = int | str | None
TextChunk = tuple[list[str], list[str] | None]


def table_format(path: str | Path) -> str:
    """The format of a data file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise LightbertError(
            f"unsupported data file type {suffix or '(none)'!r}: {path}", "use .csv, .tsv, .jsonl or .parquet"
        )
    return TABLE_SUFFIXES[suffix]


def check_data_file(path: str | Path) -> None:
    """A data file of a known format that exists (checked before any work starts)."""
    table_format(path)
    if not Path(path).is_file():
        raise LightbertError(f"data file not found: {path}", "check the path")


class Table:
    """The rows of a data file, column by column: column name -> cell values, in file order.

    Headerless CSV/TSV files name their columns 0, 1, ... CSV/TSV cells are strings; JSONL and Parquet cells keep
    their JSON/Arrow types (numbers, lists, None for null or absent). ``schema`` is a Parquet file's Arrow schema.
    """

    def __init__(self, columns: dict[Any, list[Any]], schema: Any = None) -> None:
        self.data = columns
        self.schema = schema

    @property
    def columns(self) -> list[Any]:
        return list(self.data)

    def __len__(self) -> int:
        return len(next(iter(self.data.values()), []))

    def __getitem__(self, column: Any) -> list[Any]:
        return self.data[column]


def read_table(path: str | Path, header: bool | None = None, expected_columns: Sequence[Any] = ()) -> Table:
    """Read a CSV, TSV, JSON Lines or Parquet file whole (see ``iter_tables``)."""
    tables = list(iter_tables(path, header, expected_columns))
    if not tables:
        raise LightbertError(f"data file has no rows: {path}", "give a file with at least one row")
    if len(tables) == 1:
        return tables[0]
    return Table({name: [v for t in tables for v in t[name]] for name in tables[0].columns})


def iter_tables(
    path: str | Path, header: bool | None = None, expected_columns: Sequence[Any] = (), chunk_size: int = 1 << 62
) -> Generator[Table, None, None]:
    """The rows of a data file, ``chunk_size`` rows at a time, so a long file streams.

    CSV/TSV cells are kept as strings. ``header=None`` detects whether the first row is a header: it is when every
    cell is a short identifier, no two are equal, and one names an expected column or the rows below are not
    identifiers. TSV is read without quote processing, as GLUE publishes it (quotes are part of the text).
    """
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise LightbertError(f"data file not found: {path}", "check the path")
    try:
        if path.stat().st_size == 0:
            raise LightbertError(f"data file is empty: {path}", "give a file with at least one row")
        if fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=min(chunk_size, 1 << 20)):
                columns = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
                yield Table(columns, batch.schema)
        elif fmt == "jsonl":
            with open(path, encoding="utf-8-sig") as f:
                yield from _jsonl_chunks(f, path, chunk_size)
        else:
            with open(path, encoding="utf-8-sig", newline="") as f:
                yield from _delimited_chunks(f, path, fmt, header, expected_columns, chunk_size)
    except LightbertError:
        raise
    except Exception as err:
        raise table_error(path, fmt, err) from None


def _identifiers(cells: Sequence[str]) -> bool:
    return len(set(cells)) == len(cells) and all(_HEADER_CELL.match(c) for c in cells)


def _looks_like_header(rows: list[list[str]], expected: Sequence[str] = ()) -> bool:
    if not rows or not _identifiers(rows[0]):
        return False
    names = {c.lower() for c in rows[0]}
    wanted = {str(e).lower() for e in expected} | set(TEXT_NAMES) | set(PAIR_NAMES) | set(LABEL_NAMES)
    return bool(names & wanted) or any(not _identifiers(row) for row in rows[1:])


def _csv_rows(f: IO[str], fmt: str) -> Iterator[list[str]]:
    csv.field_size_limit(1 << 30)  # a long document is one cell; the default limit is 128 KiB
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(f)
    return (row for row in reader if row)  # blank lines are not rows


def _delimited_chunks(
    f: IO[str], path: Path, fmt: str, header: bool | None, expected_columns: Sequence[Any], chunk_size: int
) -> Iterator[Table]:
    rows = _csv_rows(f, fmt)
    first = list(itertools.islice(rows, 20))
    if not first:
        return
    if header is None:
        header = _looks_like_header(first, [c for c in expected_columns if isinstance(c, str)])
    names: list[Any] = _unique_names(first[0]) if header else list(range(len(first[0])))
    rows = itertools.chain(first[1:] if header else first, rows)
    row_number = 1  # data rows, counted as in the other errors about rows (the header is not a row)
    while chunk := list(itertools.islice(rows, chunk_size)):
        for offset, row in enumerate(chunk):
            if len(row) != len(names):
                reference = "the header" if header else "the first row"
                raise LightbertError(
                    f"{path}: row {row_number + offset} has {len(row)} fields, {reference} has {len(names)}",
                    "check the delimiter and the quoting (TSV cells cannot hold tabs or newlines)",
                )
        row_number += len(chunk)
        yield Table({name: [row[i] for row in chunk] for i, name in enumerate(names)})


def _unique_names(cells: list[str]) -> list[str]:
    # Repeated header names get .1, .2 ... as pandas names them, so every column stays reachable by name.
    names: list[str] = []
    for cell in cells:
        name, n = cell, 0
        while name in names:
            n += 1
            name = f"{cell}.{n}"
        names.append(name)
    return names


def _jsonl_chunks(f: IO[str], path: Path, chunk_size: int) -> Iterator[Table]:
    records: list[dict[str, Any]] = []
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LightbertError(
                f"cannot read {path} as jsonl: line {number}: {err.msg}", "write one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise LightbertError(
                f"{path}: line {number} is not a JSON object",
                'write one object per line, like {"text": "...", "label": "..."}',
            )
        records.append(record)
        if len(records) == chunk_size:
            yield _records_table(records)
            records = []
    if records:
        yield _records_table(records)


def _records_table(records: list[dict[str, Any]]) -> Table:
    names = list(dict.fromkeys(key for record in records for key in record))
    return Table({name: [record.get(name) for record in records] for name in names})


def table_error(path: Path, fmt: str, err: Exception) -> LightbertError:
    """A reading error of csv/json/pyarrow as a clear, one-line LightbertError."""
    if isinstance(err, LightbertError):
        return err
    if isinstance(err, UnicodeDecodeError):
        return LightbertError(f"{path} is not valid UTF-8 text (byte {err.start} of a block)", "save the file as UTF-8")
    if isinstance(err, FileNotFoundError):
        return LightbertError(f"data file not found: {path}", "check the path")
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LightbertError(f"cannot read {path} as {fmt}: {first_line[:200]}", "check the file's format")


# -- columns --------------------------------------------------------------------------------------------------------


def resolve_column(table: Table, column: int | str, role: str, path: str | Path, option: str = "--data.") -> Any:
    """The table column a user means by a name or a 0-based position."""
    columns = list(table.columns)
    if isinstance(column, str) and column.isdigit() and column not in columns:
        column = int(column)
    if isinstance(column, int) and not isinstance(column, bool):
        if column in columns:  # headerless tables name their columns 0, 1, ...
            return column
        if 0 <= column < len(columns):
            return columns[column]
        raise LightbertError(
            f"{path} has {len(columns)} columns, so it has no {role} column at position {column}",
            f"choose a position from 0 to {len(columns) - 1}",
        )
    if column in columns:
        return column
    shown = ", ".join(map(str, columns[:12]))
    raise LightbertError(f"{path} has no {role} column {column!r} (columns: {shown})", f"pass {option}{role}_column")


def _default_column(table: Table, candidates: Sequence[str], fallback: int | None) -> Any:
    names = {str(c).lower(): c for c in table.columns}
    for name in candidates:
        if name in names:
            return names[name]
    return None if fallback is None else table.columns[fallback]


def select_columns(
    table: Table,
    path: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    label_column: Column = None,
    require_label: bool = True,
    detect_pair: bool = True,
    first_row: int = 1,
    option: str = "--data.",
) -> tuple[list[str], list[str] | None, list[Any] | None]:
    """Texts, optional second texts and labels from a table.

    Unnamed columns default to a text column called text/sentence/... (else the first column), a pair column
    only when one is called sentence2/text_pair/... (and ``detect_pair``), and a label column called label/...
    (else the last column). ``option`` prefixes the option named in errors (``--data.`` for fit, ``--`` else).
    """
    text_key, pair_key, label_key = column_keys(
        table, path, text_column, text_pair_column, label_column, require_label, detect_pair, option
    )
    texts = _text_values(table[text_key], path, "text", first_row)
    pairs = _text_values(table[pair_key], path, "text_pair", first_row) if pair_key is not None else None
    labels = list(table[label_key]) if label_key is not None else None
    return texts, pairs, labels


def column_keys(
    table: Table,
    path: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    label_column: Column = None,
    require_label: bool = True,
    detect_pair: bool = True,
    option: str = "--data.",
) -> tuple[Any, Any, Any]:
    """The keys of the text, pair and label columns that ``select_columns`` reads (None: no such column)."""
    if text_column is not None:
        text_key = resolve_column(table, text_column, "text", path, option)
    else:
        text_key = _default_column(table, TEXT_NAMES, 0)
    if text_pair_column is not None:
        pair_key = resolve_column(table, text_pair_column, "text_pair", path, option)
    else:
        pair_key = _default_column(table, PAIR_NAMES, None) if detect_pair else None
    label_key = None
    if label_column is not None:
        label_key = resolve_column(table, label_column, "label", path, option)
    elif require_label:
        label_key = _default_column(table, LABEL_NAMES, -1)
        if label_key in (text_key, pair_key):
            raise LightbertError(
                f"{path} has no label column", f"pass {option}label_column (a name or a 0-based position)"
            )
    return text_key, pair_key, label_key


def has_recorded_column(table: Table, column: Any) -> bool:
    """Whether ``table`` has a column recorded from another file: a name it has, or a 0-based position within its
    columns when it is a headerless CSV/TSV file, whose columns are positions too (in a file with a header, a
    position recorded from a headerless one is no clue: names are)."""
    if isinstance(column, bool) or not isinstance(column, (int, str)):
        return False
    if isinstance(column, str) and not column.isdigit():
        return column in table.columns
    return all(isinstance(c, int) for c in table.columns) and int(column) in table.columns


def columns_for_model(
    path: str | Path,
    text_column: Column,
    text_pair_column: Column,
    label_column: Column,
    recorded: Mapping[str, Any],
    paired: bool,
    labelled: bool = False,
    header: bool | None = None,
) -> tuple[tuple[Column, Column, Column], str | None]:
    """The text, pair and label columns to read a new file with for a model, and a line saying which of them were
    not given (None: all were given, or are left to the defaults).

    Each column given wins. The others are those the model's training data was read from (``recorded``: a
    checkpoint's data settings, ``text_column``/``text_pair_column``/``label_column``; the pair only for a
    ``paired`` model, the label only when ``labelled``) when this file has all of them (``has_recorded_column``);
    then, for a ``paired`` model, a second-text column found by its name (sentence2/text_pair/..., as ``fit`` finds
    it); else None: ``select_columns``'s defaults. Plain text files have no columns: the given ones are returned."""
    given = {"text": text_column, "text_pair": text_pair_column, "label": label_column}
    if str(path) == STDIN or Path(path).suffix.lower() == ".txt":
        return (text_column, text_pair_column, label_column), None
    roles = ["text", *(["text_pair"] if paired else []), *(["label"] if labelled else [])]
    wanted = {role: recorded.get(f"{role}_column") for role in roles if given[role] is None}
    wanted = {role: column for role, column in wanted.items() if column is not None}
    if not wanted and not (paired and text_pair_column is None):
        return (text_column, text_pair_column, label_column), None
    expected = [c for c in (*given.values(), *wanted.values()) if isinstance(c, str)]
    with closing(iter_tables(path, header, expected, chunk_size=PROBE_ROWS)) as tables:
        first = next(tables, None)
    chosen = dict(given)
    said = []
    if first is not None:
        if wanted and all(has_recorded_column(first, column) for column in wanted.values()):
            chosen.update(wanted)
            said += [f"{role} {column!r}" for role, column in wanted.items()]
        if paired and chosen["text_pair"] is None:
            found = _default_column(first, PAIR_NAMES, None)
            if found is not None:
                chosen["text_pair"] = found
                said.append(f"text_pair {found!r} (found by its name)")
    columns = (chosen["text"], chosen["text_pair"], chosen["label"])
    if not said:
        return columns, None
    options = ", ".join(f"--{role}_column" for role in roles)
    return columns, f"columns of {Path(path).name}: {', '.join(said)}, as the model was trained ({options} to choose)"


def fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies a data file's contents: its absolute path, size and SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(Path(path).resolve()), "size": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def is_missing(value: Any) -> bool:
    """An absent cell: None (JSON null, a missing key) or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text_values(values: list[Any], path: str | Path, role: str, first_row: int) -> list[str]:
    for row, value in enumerate(values):
        if is_missing(value):
            raise LightbertError(f"{path}: row {row + first_row} has no {role}", "fill in the text or remove the row")
    return [v if isinstance(v, str) else str(v) for v in values]


# -- texts to predict -------------------------------------------------------------------------------------------------


class RowChunk(NamedTuple):
    """Texts to predict (and their second texts), with the input rows they come from: every column of a table, or
    a ``text`` column for plain text."""

    texts: list[str]
    pairs: list[str] | None
    rows: Table


def check_input_file(path: str | Path) -> None:
    """A file of texts to predict that exists, of a known format (checked before any work starts)."""
    if str(path) == STDIN:
        return
    if Path(path).suffix.lower() != ".txt":
        table_format(path)
    if not Path(path).is_file():
        raise LightbertError(f"input file not found: {path}", "check the path")


def iter_text_chunks(
    path: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    paired: bool = False,
    chunk_size: int = 4096,
) -> Iterator[TextChunk]:
    """Texts (and second texts) to predict, ``chunk_size`` rows at a time, so memory stays flat however long the
    file is. ``.txt`` is one text per line (empty lines are empty texts); CSV/TSV/JSONL/Parquet use
    ``text_column`` (default: text/sentence/..., else the first column) and, for a ``paired`` model,
    ``text_pair_column``. ``-`` reads lines of text from standard input."""
    for chunk in iter_row_chunks(path, text_column, text_pair_column, paired, chunk_size):
        yield chunk.texts, chunk.pairs


def iter_row_chunks(
    path: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    paired: bool = False,
    chunk_size: int = 4096,
    same_columns: bool = False,
) -> Iterator[RowChunk]:
    """``iter_text_chunks`` with the rows each chunk's texts come from. ``same_columns``: every chunk has the
    columns of the whole file, in the order they first appear (JSON Lines, whose records may differ in their keys,
    is read once more first to collect them, with the type of each, ``jsonl_columns``; a key a record lacks is
    None)."""
    if str(path) == STDIN:
        if text_pair_column is not None or paired:
            raise LightbertError(
                "standard input is read as plain text, which has no second text for a pair",
                "give a CSV/TSV/JSONL/Parquet file as --input with --text_pair_column",
            )
        yield from iter_line_chunks(sys.stdin, "standard input", chunk_size)
        return
    path = Path(path)
    if not path.is_file():
        raise LightbertError(f"input file not found: {path}", "check the path")
    if path.suffix.lower() == ".txt":
        if text_pair_column is not None or paired:
            raise LightbertError(
                f"{path} is plain text, which has no second text for a pair",
                "use a CSV/TSV/JSONL/Parquet file with --text_pair_column",
            )
        with open(path, encoding="utf-8") as f:
            yield from iter_line_chunks(f, str(path), chunk_size)
        return
    if paired and text_pair_column is None:
        raise LightbertError(
            "this model was trained on text pairs", "pass --text_pair_column with the column of the second text"
        )
    keys, schema = jsonl_columns(path) if same_columns and table_format(path) == "jsonl" else (None, None)
    first_row = 1
    for table in iter_tables(path, None, [text_column, text_pair_column], chunk_size=chunk_size):
        texts, pairs, _ = select_columns(
            table, path, text_column, text_pair_column, None, False, False, first_row, option="--"
        )
        first_row += len(texts)
        if keys is not None:
            table = Table({key: table.data.get(key, [None] * len(texts)) for key in keys}, schema)
        yield RowChunk(texts, pairs, table)


def iter_line_chunks(stream: IO[str], name: str, chunk_size: int = 4096) -> Iterator[RowChunk]:
    """Lines of text as texts to predict, ``chunk_size`` at a time (a line's end is not part of its text; an empty
    line is an empty text). Standard input is read as UTF-8, whatever the locale."""
    if stream is None:  # a process started without standard input
        raise LightbertError("there is no standard input to read", "give --input FILE, or pipe texts into the command")
    buffer = getattr(stream, "buffer", None) if stream is sys.stdin else None
    lines: IO[str] = io.TextIOWrapper(buffer, encoding="utf-8") if buffer is not None else stream
    chunk: list[str] = []
    try:
        for line in lines:
            chunk.append(line[:-1] if line.endswith("\n") else line)
            if len(chunk) == chunk_size:
                yield RowChunk(chunk, None, Table({"text": chunk}))
                chunk = []
    except UnicodeDecodeError as err:
        hint = "give UTF-8 text" if stream is sys.stdin else "save the file as UTF-8"
        raise LightbertError(f"{name} is not valid UTF-8 text (byte {err.start} of a block)", hint) from None
    finally:
        if buffer is not None:
            lines.detach()  # type: ignore[attr-defined]  # leave standard input open
    if chunk:
        yield RowChunk(chunk, None, Table({"text": chunk}))


def jsonl_columns(path: str | Path) -> tuple[list[Any], Any]:
    """The keys of a JSON Lines file's records, in the order they first appear, and an Arrow schema of those whose
    values (nulls aside) are of one type throughout the file: strings, booleans, integers, or numbers (integers
    and floats: float)."""
    import pyarrow as pa

    kinds: dict[Any, set[type]] = {}
    for table in iter_tables(path, chunk_size=4096):
        for key in table.columns:
            kinds.setdefault(key, set()).update(type(value) for value in table[key] if value is not None)
    types = {str: pa.string(), bool: pa.bool_(), int: pa.int64(), float: pa.float64()}
    fields = []
    for key, found in kinds.items():
        if found == {int, float}:
            found = {float}
        if len(found) == 1 and next(iter(found)) in types:
            fields.append(pa.field(str(key), types[next(iter(found))]))
    return list(kinds), pa.schema(fields)


def count_rows(path: str | Path) -> int | None:
    """How many texts a file holds, cheaply (for a progress bar's ETA): newlines, or Parquet's metadata."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        count, last = 0, b"\n"
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                count += block.count(b"\n")
                last = block[-1:]
        return count + (last != b"\n")
    except OSError:
        return None
