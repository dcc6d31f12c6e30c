"""Defaults fitted to the data against fixed defaults: `lightbert fit` given only the files, on the shared data sets.

    python benchmarks/defaults.py --datasets stsb,agnews
    python benchmarks/defaults.py --datasets sst2 --runs fitted

For each data set, `lightbert fit` runs twice on the same training file: with common fixed settings
(``--trainer.max_epochs 2 --data.batch_size 32 --model.learning_rate 5e-5``: "fixed") and with only
the files (the settings fitted to the data, printed by fit: "fitted"); fit splits 10% of the training file off for
its own validation. The best checkpoint is then scored by `lightbert evaluate` on rows no run has seen:
- ``stsb``: train.tsv (4,249 sentence pairs, regression) to train, validation.tsv (1,500) to score: Pearson;
- ``agnews``: rows 1-9,000 of train.tsv to train, rows 9,001-10,000 to score: accuracy;
- ``sst2``: train.tsv (60,614 sentences) to train, validation.tsv (6,735) to score: accuracy (long: about 20
  minutes a run on 2 cores; fitted and fixed settings are the same for data this large).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from measure import lightbert, machine

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXED = ["--trainer.max_epochs=2", "--data.batch_size=32", "--model.learning_rate=5e-5"]


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_readme.py, which checks the README's commands against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="stsb,agnews", help="comma-separated, from stsb, agnews, sst2")
    parser.add_argument("--runs", default="fixed,fitted", help="comma-separated, from fixed, fitted")
    return parser


def prepare(name: str, tmp: Path) -> tuple[Path, Path, list[str], list[str], str]:
    """Training file, scoring file, fit's column options, evaluate's column options and the metric's name."""
    if name == "stsb":
        columns = ["text_column=7", "text_pair_column=8", "label_column=9", "header=false"]
        return (DATA / "stsb" / "train.tsv", DATA / "stsb" / "validation.tsv", [f"--data.{c}" for c in columns],
                [f"--{c}" for c in columns], "pearson")  # fmt: skip
    if name == "agnews":
        lines = (DATA / "agnews" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (tmp / "agnews-train.tsv").write_text("".join(lines[:9000]), encoding="utf-8")
        (tmp / "agnews-test.tsv").write_text("".join(lines[9000:10000]), encoding="utf-8")
        return tmp / "agnews-train.tsv", tmp / "agnews-test.tsv", [], [], "accuracy"
    if name == "sst2":
        return DATA / "sst2" / "train.tsv", DATA / "sst2" / "validation.tsv", [], [], "accuracy"
    raise SystemExit(f"unknown data set {name!r}: use stsb, agnews or sst2")


def main() -> None:
    options = build_parser().parse_args()
    print(machine(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        for name in options.datasets.split(","):
            train, test, fit_columns, evaluate_columns, metric = prepare(name, tmp)
            for run in options.runs.split(","):
                root = tmp / f"{name}-{run}"
                start = time.perf_counter()
                settings_given = FIXED if run == "fixed" else []
                out = lightbert(
                    "fit", f"--data.train={train}", *fit_columns, *settings_given,
                    f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
                )  # fmt: skip
                seconds = time.perf_counter() - start
                fitted = re.search(r"settings fitted to .*?: (.*) \(pass", out)
                settings = fitted.group(1) if fitted else " ".join(a.replace("=", " ") for a in FIXED)
                best = re.search(r"best checkpoint: (\S+)", out).group(1)  # type: ignore[union-attr]
                lightbert("evaluate", best, f"--input={test}", f"--output_dir={root / 'report'}", *evaluate_columns)
                value = json.loads((root / "report" / "report.json").read_text())["metrics"][metric]
                results.append((name, run, settings, metric, value, seconds))
                print(f"{name} {run}: {settings}: held-out {metric} {value:.4f}, fit {seconds:.0f} s", flush=True)
    print("\n| data | run | settings | held-out metric | fit s |")
    print("| --- | --- | --- | ---: | ---: |")
    for name, run, settings, metric, value, seconds in results:
        print(f"| {name} | {run} | `{settings}` | {metric} {value:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
