"""Class weights on imbalanced labels: the recall of a rare class with and without `--model.class_weights balanced`.

    python benchmarks/imbalance.py --per_class 500 --rare Sci/Tech --share 0.05

AG News (../shared/data/agnews/train.tsv, 10,000 rows, 4 topics): training rows from its first 6,000 rows, at most
``--per_class`` of each topic, the ``--rare`` topic cut to ``--share`` of that; validation rows (for the best
checkpoint) from rows 6,000-8,000, imbalanced the same way; scored on rows 8,000-10,000, held out and balanced as
published. The same `lightbert fit` (bundled MiniLM, --data.max_length 64, 2 epochs) runs without and with class
weights, and `lightbert evaluate` scores each best checkpoint: the rare topic's recall, precision and F1, accuracy and
macro-F1.
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

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "agnews" / "train.tsv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per_class", type=int, default=500, help="training rows per topic (before the cut)")
    parser.add_argument("--rare", default="Sci/Tech", help="the topic made rare")
    parser.add_argument("--share", type=float, default=0.05, help="share of its rows the rare topic keeps")
    parser.add_argument("--epochs", type=int, default=2)
    return parser


def read_rows() -> list[tuple[str, str]]:
    with open(DATA, encoding="utf-8") as f:
        return [(row[0], row[1]) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def imbalanced(rows: list[tuple[str, str]], per_class: int, rare: str, share: float) -> list[tuple[str, str]]:
    kept: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for text, label in rows:
        limit = max(1, round(per_class * share)) if label == rare else per_class
        if counts.get(label, 0) < limit:
            counts[label] = counts.get(label, 0) + 1
            kept.append((text, label))
    return kept


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Rows as the shared file has them: no header, text TAB label."""
    path.write_text("".join(f"{text.replace(chr(9), ' ')}\t{label}\n" for text, label in rows), encoding="utf-8")
    return path


def main() -> None:
    options = build_parser().parse_args()
    print(machine())
    rows = read_rows()
    train = imbalanced(rows[:6000], options.per_class, options.rare, options.share)
    validation = imbalanced(rows[6000:8000], options.per_class // 2, options.rare, options.share)
    test = rows[8000:]
    counts = {label: sum(1 for _, lab in train if lab == label) for label in sorted({lab for _, lab in train})}
    print(f"training rows per topic: {counts}; validation {len(validation)} rows; held-out test {len(test)} rows")
    table = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        files = [write_tsv(tmp / f"{name}.tsv", part) for name, part in (("train", train), ("val", validation))]
        test_file = write_tsv(tmp / "test.tsv", test)
        for name, extra in (("no weights", []), ("class_weights balanced", ["--model.class_weights=balanced"])):
            root = tmp / name.replace(" ", "_")
            start = time.perf_counter()
            out = lightbert(
                "fit", f"--data.train={files[0]}", f"--data.validation={files[1]}", "--data.max_length=64",
                f"--trainer.max_epochs={options.epochs}", f"--trainer.default_root_dir={root}",
                "--trainer.enable_progress_bar=false", *extra,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            best = re.search(r"best checkpoint: (\S+)", out).group(1)  # type: ignore[union-attr]
            lightbert("evaluate", best, f"--input={test_file}", f"--output_dir={root / 'report'}")
            report = json.loads((root / "report" / "report.json").read_text())
            rare = report["per_class"][options.rare]
            table.append((name, rare, report["metrics"], seconds))
    print(
        f"\nheld-out AG News rows ({len(test)}, balanced), topic {options.rare} kept at {options.share:.0%} in training"
    )
    print(f"| run | {options.rare} recall | precision | F1 | accuracy | macro-F1 | fit (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rare, metrics, seconds in table:
        print(
            f"| {name} | {rare['recall']:.3f} | {rare['precision']:.3f} | {rare['f1']:.3f} | {metrics['accuracy']:.4f}"
            f" | {metrics['f1_macro']:.4f} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
