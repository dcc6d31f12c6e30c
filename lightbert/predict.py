"""Prediction over streams of texts: chunk by chunk (memory stays flat however long the input), to a stream or
atomically to a file, with a progress bar on terminals; or a file shared by a group of processes
(``lightbert.distributed``).

What is written follows the output's extension: ``.jsonl`` (and standard output, ``-``) one record per text, in input
order; ``.csv``/``.tsv``/``.parquet`` the input's rows with all their columns and the prediction's (``label``,
``score``, ``prob_<label>``...; see ``prediction_columns``), so that predictions join back to their rows."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from lightbert.classifier import Classifier
from lightbert.distributed import Processes, barrier, broadcast
from lightbert.errors import LightbertError
from lightbert.safety import atomic_write
from lightbert.tables import Column, RowChunk, Table, TextChunk, iter_row_chunks, iter_text_chunks

STDOUT = "-"  # the output path that means standard output
OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
Chunk = TextChunk | RowChunk


@dataclass
class PredictionSummary:
    """How many texts were predicted, and how many of them were truncated to the model's limit."""

    count: int = 0
    truncated: int = 0


def output_format(output: str | Path | None) -> str:
    """What an output path gets, from its extension: ``jsonl``, ``csv``, ``tsv`` or ``parquet`` (standard output,
    ``-`` or None: ``jsonl``)."""
    if output is None or str(output) == STDOUT:
        return "jsonl"
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise LightbertError(
            f"unknown output type {suffix or '(no extension)'!r}: {output}",
            "name the output .jsonl, .csv, .tsv or .parquet, or - for standard output",
        )
    return OUTPUT_FORMATS[suffix]


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths are one file: the same path, or through a symbolic or a hard link (device and inode)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_output_file(path: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """An output file may be written: a known type, not one of ``inputs`` (the data, the model: ``--overwrite``
    would replace it), its directory exists, and it does not exist unless ``overwrite``."""
    output_format(path)
    path = Path(path)
    for source in inputs:
        if source is not None and str(source) != STDOUT and same_file(path, source):
            raise LightbertError(
                f"the output {path} is the input {source}; writing it would replace it",
                "choose another --output",
            )
    if path.exists() and not overwrite:
        raise LightbertError(f"output file exists: {path}", "choose another path or pass --overwrite")
    if not path.parent.is_dir():
        raise LightbertError(f"output directory not found: {path.parent}", "create it first")


# -- predicting ---------------------------------------------------------------------------------------------------


def predicted_chunks(
    classifier: Classifier,
    chunks: Iterable[Chunk],
    batch_size: int = 64,
    threshold: float | None = None,
    summary: PredictionSummary | None = None,
    progress: Any = None,
) -> Iterator[tuple[Chunk, list[dict[str, Any]]]]:
    """Each chunk of texts as it comes, with its records, counted in ``summary``."""
    for chunk in chunks:
        texts, pairs = chunk[0], chunk[1]
        records = classifier.predict(texts, pairs, batch_size=batch_size, threshold=threshold)
        if summary is not None:
            summary.count += len(records)
            summary.truncated += sum(1 for record in records if record.get("truncated"))
        if progress is not None:
            progress.update(len(texts))
        yield chunk, records


def predict_stream(
    classifier: Classifier,
    chunks: Iterable[Chunk],
    batch_size: int = 64,
    threshold: float | None = None,
    summary: PredictionSummary | None = None,
    progress: Any = None,
) -> Iterator[dict[str, Any]]:
    """Records for each chunk of texts as it comes, counted in ``summary``."""
    for _, records in predicted_chunks(classifier, chunks, batch_size, threshold, summary, progress):
        yield from records


def jsonl_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, ensure_ascii=False) + "\n"


def rows_of(chunk: Chunk) -> Table:
    """The input rows of a chunk: its own, or (texts without rows) a ``text`` column and a ``text_pair`` one."""
    if isinstance(chunk, RowChunk):
        return chunk.rows
    texts, pairs = chunk
    return Table({"text": texts, **({"text_pair": pairs} if pairs is not None else {})})


# -- writing ------------------------------------------------------------------------------------------------------


def prediction_columns(classifier: Classifier, taken: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The columns a table output adds to the input's, as (name, what): ``label``, ``score`` and ``prob_<label>``
    per label (single-label); ``labels`` and ``prob_<label>`` (multi-label); ``score`` (regression); then
    ``truncated`` (``windows`` when long texts are chunked). A name the input already has (``taken``) gets
    ``predicted_`` before it."""
    probs = [(f"prob_{name}", f"prob:{name}") for name in classifier.labels or []]
    if classifier.task == "regression":
        columns = [("score", "score")]
    elif classifier.task == "multi_label":
        columns = [("labels", "labels"), *probs]
    else:
        columns = [("label", "label"), ("score", "score"), *probs]
    columns.append(("windows", "windows") if classifier.long_texts.mode == "chunk" else ("truncated", "truncated"))
    used = {str(name) for name in taken}
    named = []
    for name, what in columns:
        while name in used:
            name = f"predicted_{name}"
        used.add(name)
        named.append((name, what))
    return named


def _predicted_value(record: dict[str, Any], what: str) -> Any:
    if what.startswith("prob:"):
        return record["probs"][what[5:]]
    if what == "truncated":
        return bool(record.get("truncated", False))
    if what == "windows":
        return int(record.get("windows", 1))
    return record[what]


def _column_name(column: Any) -> str:
    return f"column_{column}" if isinstance(column, int) else str(column)  # a headerless file's columns: positions


class PredictionWriter:
    """Writes chunks of predictions to a binary file in one format, a chunk at a time: ``jsonl`` the records;
    ``csv``/``tsv``/``parquet`` each input row with its prediction's columns (``prediction_columns``), the columns
    fixed by the first chunk. Headerless inputs' columns are named ``column_0``, ``column_1``...; a TSV cell may
    hold no tab or line break (the TSV that ``lightbert`` reads); Parquet keeps the column types of a Parquet input
    (of JSON Lines: a key's one type throughout; others: those of the first rows), and never cuts a value to fit
    them; a multi-label ``labels`` cell is a list (Parquet) or the labels joined by
    ``label_delimiter``. ``close`` finishes the file (a table with a header and no rows if nothing came)."""

    def __init__(self, fmt: str, classifier: Classifier, f: IO[bytes], name: str, label_delimiter: str = ",") -> None:
        self.fmt, self.classifier, self.f, self.name = fmt, classifier, f, name
        self.label_delimiter = label_delimiter
        self.columns: list[Any] | None = None  # the input's columns, from the first chunk
        self.predicted: list[tuple[str, str]] = []
        self.text: io.TextIOWrapper | None = None
        self.csv: Any = None
        self.parquet: Any = None
        self.schema: Any = None
        self.typed: set[str] = set()  # the columns whose type the input gave (Parquet, JSON Lines of one type)
        self.rows = 0

    def write(self, rows: Table, records: list[dict[str, Any]]) -> None:
        if self.fmt == "jsonl":
            self.f.writelines(line.encode("utf-8") for line in jsonl_lines(records))
            return
        if self.columns is None:
            self._start(rows)
        assert self.columns is not None
        missing = [c for c in rows.columns if c not in self.columns]
        if missing:  # cannot happen for files read with same_columns
            raise LightbertError(
                f"rows {self.rows + 1}.. of the input have a column the first rows lack: {missing[0]!r}",
                "write .jsonl, or give every row the same columns",
            )
        data = {c: rows.data.get(c, [None] * len(records)) for c in self.columns}
        predicted = {name: [_predicted_value(r, what) for r in records] for name, what in self.predicted}
        if self.fmt == "parquet":
            self._write_parquet(data, predicted, len(records))
        else:
            self._write_delimited(data, predicted, len(records))
        self.rows += len(records)

    def close(self) -> None:
        if self.fmt == "jsonl":
            return
        if self.columns is None:  # no rows came
            schema = None
            if self.fmt == "parquet":
                import pyarrow as pa

                schema = pa.schema([("text", pa.string())])
            self._start(Table({"text": []}, schema))
        if self.parquet is not None:
            self.parquet.close()
        if self.text is not None:
            self.text.flush()
            self.text.detach()  # the file stays open for its owner

    def abort(self) -> None:
        """Let go of the file after an error (it is not finished, and is removed by its owner)."""
        if self.parquet is not None:
            with contextlib.suppress(Exception):  # what it writes is thrown away
                self.parquet.close()
            self.parquet = None
        if self.text is not None:
            with contextlib.suppress(ValueError, OSError):
                self.text.detach()
            self.text = None

    def _start(self, rows: Table) -> None:
        self.columns = list(rows.columns)
        names = [_column_name(c) for c in self.columns]
        self.predicted = prediction_columns(self.classifier, names)
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            fields = []
            for column, name in zip(self.columns, names, strict=True):
                if rows.schema is not None and name in rows.schema.names:
                    fields.append(pa.field(name, rows.schema.field(name).type))
                    self.typed.add(name)
                else:
                    fields.append(pa.field(name, self._arrow(rows.data[column], None, name).type))
            types = {"label": pa.string(), "score": pa.float64(), "labels": pa.list_(pa.string())}
            types |= {"truncated": pa.bool_(), "windows": pa.int64()}
            fields += [pa.field(name, types.get(what, pa.float64())) for name, what in self.predicted]
            self.schema = pa.schema(fields)
            self.parquet = pq.ParquetWriter(self.f, self.schema)
        else:
            self.text = io.TextIOWrapper(self.f, encoding="utf-8", newline="")
            if self.fmt == "tsv":
                self.csv = csv.writer(self.text, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None,
                                      lineterminator="\n")  # fmt: skip
            else:
                self.csv = csv.writer(self.text, lineterminator="\n")
            header = names + [name for name, _ in self.predicted]
            self._check_tsv([header], header, None)
            self.csv.writerow(header)

    def _arrow(self, values: list[Any], target: Any, name: str, typed: bool = False) -> Any:
        """``values`` as an Arrow array of type ``target`` (None: inferred). ``typed``: the values are of that type
        (read from a Parquet file of that schema, or of a JSON Lines key of that one type), and are converted as
        they are; else their own type is converted only where nothing can change: a null to anything, an integer
        to a float (never a float to an integer, a text to a number)."""
        import pyarrow as pa

        try:
            if typed:
                return pa.array(values, type=target)
            array = pa.array(values)
            if target is None or array.type == target:
                return array
            if pa.types.is_null(array.type) or (pa.types.is_integer(array.type) and pa.types.is_floating(target)):
                return array.cast(target)
            problem = f"{array.type} values, where the first rows have {target}"
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as err:
            problem = str(err).strip().splitlines()[0][:150] if str(err).strip() else type(err).__name__
        raise LightbertError(
            f"cannot write {self.name} as Parquet: column {name!r} of rows {self.rows + 1}-{self.rows + len(values)}:"
            f" {problem}",
            "write .jsonl or .csv, or give the column one type",
        )

    def _write_parquet(self, data: dict[Any, list[Any]], predicted: dict[str, list[Any]], count: int) -> None:
        import pyarrow as pa

        arrays = []
        for field, values in zip(self.schema, [*data.values(), *predicted.values()], strict=True):
            if field.name in predicted:
                arrays.append(pa.array(values, type=field.type))
            else:
                arrays.append(self._arrow(values, field.type, field.name, field.name in self.typed))
        self.parquet.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def _write_delimited(self, data: dict[Any, list[Any]], predicted: dict[str, list[Any]], count: int) -> None:
        columns = [*data.values(), *predicted.values()]
        rows = [[_cell(column[i], self.label_delimiter) for column in columns] for i in range(count)]
        names = [_column_name(c) for c in data] + list(predicted)
        self._check_tsv(rows, names, self.rows + 1)
        self.csv.writerows(rows)

    def _check_tsv(self, rows: list[list[str]], names: list[str], first: int | None) -> None:
        """TSV cells (``first``: the number of the first row; None: the header) hold no tab or line break."""
        if self.fmt != "tsv":
            return
        for offset, row in enumerate(rows):
            for name, cell in zip(names, row, strict=True):
                if "\t" in cell or "\n" in cell or "\r" in cell:
                    where = "a column name" if first is None else f"row {first + offset}'s column {name!r}"
                    raise LightbertError(
                        f"cannot write {self.name}: {where} holds a tab or a line break, which a TSV cell cannot hold",
                        "write .csv, .jsonl or .parquet instead",
                    )


def _cell(value: Any, label_delimiter: str) -> str:
    """A value as a CSV/TSV cell: text as it is, true/false, numbers as Python writes them, lists of labels joined,
    other lists and objects as JSON, a missing value empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return label_delimiter.join(value) if label_delimiter else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _label_delimiter(classifier: Classifier) -> str:
    delimiter = classifier.info.data.get("label_delimiter")
    return delimiter if isinstance(delimiter, str) and delimiter else ","


def write_predictions(
    classifier: Classifier,
    chunks: Iterable[Chunk],
    output: str | Path | IO[str] | None = None,
    total: int | None = None,
    batch_size: int = 64,
    threshold: float | None = None,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> PredictionSummary:
    """Predict ``chunks`` and write them to ``output``: a path (written atomically, in the format of its extension,
    ``output_format``; an existing file is kept unless ``overwrite``, and one of ``inputs`` or the model's file is
    never replaced), a text stream, or stdout (None or ``-``; JSON Lines). Chunks are ``(texts, pairs)`` or
    ``RowChunk`` s, whose rows a table output writes (texts alone: a ``text`` column). A progress bar with ETA
    (``total`` texts) shows on terminals."""
    from tqdm import tqdm

    path = output if isinstance(output, (str, Path)) and str(output) != STDOUT else None
    if path is not None:
        check_output_file(path, overwrite, [*inputs, classifier.info.path])
    summary = PredictionSummary()
    # disable=None: shown on a terminal only; pipes and logs stay clean.
    with tqdm(total=total, unit="text", file=sys.stderr, disable=None, dynamic_ncols=True, leave=False) as progress:
        predicted = predicted_chunks(classifier, chunks, batch_size, threshold, summary, progress)
        if path is not None:
            fmt = output_format(path)
            atomic_write(path, lambda f: _write_all(fmt, classifier, f, str(path), predicted), what="output")
        else:
            stream = output if output is not None and not isinstance(output, (str, Path)) else sys.stdout
            for _, records in predicted:
                stream.writelines(jsonl_lines(records))
    return summary


def _write_all(
    fmt: str,
    classifier: Classifier,
    f: IO[bytes],
    name: str,
    predicted: Iterable[tuple[Chunk, list[dict[str, Any]]]],
) -> None:
    writer = PredictionWriter(fmt, classifier, f, name, _label_delimiter(classifier))
    try:
        for chunk, records in predicted:
            writer.write(rows_of(chunk), records)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def write_predictions_in_group(
    processes: Processes,
    classifier: Classifier,
    input_path: str | Path,
    output: str | Path,
    text_column: Column = None,
    text_pair_column: Column = None,
    batch_size: int = 64,
    threshold: float | None = None,
    overwrite: bool = False,
    chunk_size: int = 4096,
) -> PredictionSummary:
    """``write_predictions`` for a file, shared by a group of processes: chunk ``i`` of the input goes to process
    ``i mod N``, which predicts it exactly as one process would and writes its records to a shard beside
    ``output``; the first process then joins the shards in input order into ``output``, atomically (a table output
    reads the input's rows once more, beside the shards' records): the file one process writes. Each process holds
    one chunk at a time. Returns the whole group's counts (in the first process)."""
    output = Path(output)
    if processes.is_first:
        check_output_file(output, overwrite, [input_path, classifier.info.path])
        made = tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
        processes.cleanup.append(Path(made))
    staging = Path(broadcast(processes, made if processes.is_first else None))
    try:
        summary = PredictionSummary()
        counts: list[int] = []
        with open(staging / f"rank-{processes.rank}.jsonl", "w", encoding="utf-8") as shard:
            chunks = iter_text_chunks(input_path, text_column, text_pair_column, classifier.paired, chunk_size)
            for index, chunk in enumerate(chunks):
                if index % processes.world_size == processes.rank:
                    records = list(predict_stream(classifier, [chunk], batch_size, threshold, summary))
                    shard.writelines(jsonl_lines(records))
                    counts.append(len(records))
        (staging / f"rank-{processes.rank}.json").write_text(json.dumps({"counts": counts, **asdict(summary)}))
        barrier(processes, "every process had predicted its share")
        if processes.is_first:

            def rows() -> Iterator[RowChunk]:
                return iter_row_chunks(input_path, text_column, text_pair_column, classifier.paired, chunk_size, True)

            summary = _join_shards(staging, processes.world_size, output, classifier, rows)
        barrier(processes, "the output was written")
        return summary
    finally:
        if processes.is_first:
            shutil.rmtree(staging, ignore_errors=True)


def _join_shards(
    staging: Path, world_size: int, output: Path, classifier: Classifier, rows: Callable[[], Iterator[RowChunk]]
) -> PredictionSummary:
    meta = [json.loads((staging / f"rank-{rank}.json").read_text()) for rank in range(world_size)]
    total = PredictionSummary(sum(m["count"] for m in meta), sum(m["truncated"] for m in meta))
    chunks = sum(len(m["counts"]) for m in meta)
    fmt = output_format(output)

    def write(f: IO[bytes]) -> None:
        shards = [open(staging / f"rank-{rank}.jsonl", "rb") for rank in range(world_size)]  # noqa: SIM115
        try:
            if fmt == "jsonl":  # the records' lines as they are
                for index in range(chunks):
                    rank = index % world_size
                    for _ in range(meta[rank]["counts"][index // world_size]):
                        f.write(shards[rank].readline())
                return

            def predicted() -> Iterator[tuple[Chunk, list[dict[str, Any]]]]:
                for index, chunk in enumerate(rows()):
                    rank = index % world_size
                    count = meta[rank]["counts"][index // world_size] if index < chunks else -1
                    if count != len(chunk.texts):
                        raise LightbertError(f"the input changed while it was predicted: {output}", "run again")
                    yield chunk, [json.loads(shards[rank].readline()) for _ in range(count)]

            _write_all(fmt, classifier, f, str(output), predicted())
        finally:
            for shard in shards:
                shard.close()

    atomic_write(output, write, what="output")
    return total
