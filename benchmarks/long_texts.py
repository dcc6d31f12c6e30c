"""Long texts: AG News articles read with a small length limit, truncated against chunked into windows.

    python benchmarks/long_texts.py --max_length 32 --train_rows 2000

AG News (../shared/data/agnews/train.tsv): the first ``--train_rows`` rows to train, rows 6,000-7,000 to validate,
rows 8,000-10,000 held out to score. With ``--data.max_length 32`` most articles (about 50 tokens) do not fit: the
truncated run sees each article's first 30 tokens; the chunked run (``--data.long_texts chunk``) trains on every
window of 32 tokens (overlapping by 8) with its article's label and scores each article from the mean of its windows'
logits. Both are `lightbert fit` (bundled MiniLM, 2 epochs) then `lightbert evaluate` of the best checkpoint; the
truncated run's model is also scored with chunking at prediction time only.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import tempfile
import time
from pathlib import Path

from measure import lightbert, machine
from transformers import AutoTokenizer

from lightbert.bundled import default_base_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "agnews" / "train.tsv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_length", type=int, default=32)
    parser.add_argument("--train_rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    return parser


def write_rows(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines), encoding="utf-8")
    return path


def accuracy(model: str, test: Path, directory: Path, *extra: str) -> float:
    lightbert("evaluate", model, f"--input={test}", f"--output_dir={directory}", *extra)
    return float(json.loads((directory / "report.json").read_text())["metrics"]["accuracy"])


def main() -> None:
    options = build_parser().parse_args()
    print(machine())
    with open(DATA, encoding="utf-8") as f:
        lines = f.readlines()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        train = write_rows(tmp / "train.tsv", lines[: options.train_rows])
        val = write_rows(tmp / "val.tsv", lines[6000:7000])
        test = write_rows(tmp / "test.tsv", lines[8000:10000])
        tokenizer = AutoTokenizer.from_pretrained(default_base_model())  # to say how long the articles are
        texts = [row[0] for row in csv.reader(lines[8000:10000], delimiter="\t", quoting=csv.QUOTE_NONE)]
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        longer = sum(n > options.max_length for n in lengths) / len(lengths)
        print(f"held-out articles: {len(texts)}, median {sorted(lengths)[len(lengths) // 2]} tokens;"
              f" {longer:.0%} longer than {options.max_length}")  # fmt: skip
        rows = []
        for mode in ("truncate", "chunk"):
            root = tmp / mode
            start = time.perf_counter()
            out = lightbert(
                "fit", f"--data.train={train}", f"--data.validation={val}", f"--data.max_length={options.max_length}",
                f"--data.long_texts={mode}", f"--trainer.max_epochs={options.epochs}",
                f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
            )  # fmt: skip
            seconds = time.perf_counter() - start
            best = re.search(r"best checkpoint: (\S+)", out).group(1)  # type: ignore[union-attr]
            rows.append((f"fit --data.long_texts {mode}, evaluate --long_texts {mode}", seconds,
                         accuracy(best, test, root / "report", f"--long_texts={mode}")))  # fmt: skip
            if mode == "truncate":
                rows.append(("fit truncate, evaluate --long_texts chunk", None,
                             accuracy(best, test, root / "report-chunk", "--long_texts=chunk")))  # fmt: skip
    print(f"\nAG News, {options.train_rows} training rows, --data.max_length {options.max_length}, held-out accuracy")
    print("| run | held-out accuracy | fit (s) |")
    print("| --- | --- | --- |")
    for name, seconds, value in rows:
        print(f"| {name} | {value:.4f} | {'' if seconds is None else f'{seconds:.0f}'} |")


if __name__ == "__main__":
    main()
