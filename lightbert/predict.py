"""Prediction over streams of texts: chunk by chunk (memory stays flat however long the input), records written as
JSON Lines in input order, to a stream or atomically to a file, with a progress bar on terminals; or a file shared
by a group of processes (``lightbert.distributed``)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from lightbert.classifier import Classifier
from lightbert.distributed import Processes, barrier, broadcast
from lightbert.errors import LightbertError
from lightbert.safety import atomic_write
from lightbert.tables import Column, TextChunk, iter_text_chunks


@dataclass
class PredictionSummary:
    """How many texts were predicted, and how many of them were truncated to the model's limit."""

    count: int = 0
    truncated: int = 0


def check_output_file(path: str | Path, overwrite: bool) -> None:
    """An output file may be written: its directory exists, and it does not exist unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise LightbertError(f"output file exists: {path}", "choose another path or pass --overwrite")
    if not path.parent.is_dir():
        raise LightbertError(f"output directory not found: {path.parent}", "create it first")


def predict_stream(
    classifier: Classifier,
    chunks: Iterable[TextChunk],
    batch_size: int = 64,
    threshold: float | None = None,
    summary: PredictionSummary | None = None,
    progress: Any = None,
) -> Iterator[dict[str, Any]]:
    """Records for each chunk of texts as it comes, counted in ``summary``."""
    for texts, pairs in chunks:
        records = classifier.predict(texts, pairs, batch_size=batch_size, threshold=threshold)
        if summary is not None:
            summary.count += len(records)
            summary.truncated += sum(1 for record in records if record.get("truncated"))
        if progress is not None:
            progress.update(len(texts))
        yield from records


def jsonl_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, ensure_ascii=False) + "\n"


def write_predictions(
    classifier: Classifier,
    chunks: Iterable[TextChunk],
    output: str | Path | IO[str] | None = None,
    total: int | None = None,
    batch_size: int = 64,
    threshold: float | None = None,
    overwrite: bool = False,
) -> PredictionSummary:
    """Predict ``chunks`` and write JSON Lines to ``output``: a path (written atomically; an existing file is kept
    unless ``overwrite``), a text stream, or stdout. A progress bar with ETA (``total`` texts) shows on terminals."""
    from tqdm import tqdm

    if isinstance(output, (str, Path)):
        check_output_file(output, overwrite)
    summary = PredictionSummary()
    # disable=None: shown on a terminal only; pipes and logs stay clean.
    with tqdm(total=total, unit="text", file=sys.stderr, disable=None, dynamic_ncols=True, leave=False) as progress:
        lines = jsonl_lines(predict_stream(classifier, chunks, batch_size, threshold, summary, progress))
        if isinstance(output, (str, Path)):
            atomic_write(output, lambda f: f.writelines(line.encode("utf-8") for line in lines), what="output")
        else:
            stream = output or sys.stdout
            for line in lines:
                stream.write(line)
    return summary


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
    ``output``; the first process then joins the shards in input order into ``output``, atomically. Each process
    holds one chunk at a time. Returns the whole group's counts (in the first process)."""
    output = Path(output)
    if processes.is_first:
        check_output_file(output, overwrite)
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
            summary = _join_shards(staging, processes.world_size, output)
        barrier(processes, "the output was written")
        return summary
    finally:
        if processes.is_first:
            shutil.rmtree(staging, ignore_errors=True)


def _join_shards(staging: Path, world_size: int, output: Path) -> PredictionSummary:
    meta = [json.loads((staging / f"rank-{rank}.json").read_text()) for rank in range(world_size)]
    total = PredictionSummary(sum(m["count"] for m in meta), sum(m["truncated"] for m in meta))
    chunks = sum(len(m["counts"]) for m in meta)

    def write(f: IO[bytes]) -> None:
        shards = [open(staging / f"rank-{rank}.jsonl", "rb") for rank in range(world_size)]  # noqa: SIM115
        try:
            for index in range(chunks):
                rank = index % world_size
                for _ in range(meta[rank]["counts"][index // world_size]):
                    f.write(shards[rank].readline())
        finally:
            for shard in shards:
                shard.close()

    atomic_write(output, write, what="output")
    return total
