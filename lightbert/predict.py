"""Prediction over streams of texts: chunk by chunk (memory stays flat however long the input), records written as
JSON Lines in input order, to a stream or atomically to a file, with a progress bar on terminals."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lightbert.classifier import Classifier
from lightbert.errors import LightbertError
from lightbert.safety import atomic_write
from lightbert.tables import TextChunk


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
    threshold: float = 0.5,
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
    threshold: float = 0.5,
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
