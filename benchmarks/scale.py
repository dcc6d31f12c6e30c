"""One process against several: `lightbert fit` and `lightbert predict` on the same data, whole commands timed.

    python benchmarks/scale.py --rows 2000 --texts 8000 --devices 1,2

Fine-tuning: the bundled MiniLM on the first ``--rows`` SST-2 rows for one epoch, at the same global batch (32 on
one process, 32 / N per process on N), validated on 500 held-out rows; the runs agree when their validation
accuracies do (dropout makes them differ slightly). Prediction: the one-process run's checkpoint on ``--texts``
SST-2 + AG News texts; the outputs must be byte for byte the same. Figures are whole commands (start-up, every
process's imports and the process group included), so they show the overhead of more processes; on a 2-core CPU two
processes cannot beat one process using both cores. ``--accelerator gpu`` runs on GPUs (one per process).
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import machine

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_readme.py, which checks the README's commands against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="SST-2 training rows")
    parser.add_argument("--texts", type=int, default=8000, help="texts to predict")
    parser.add_argument("--devices", default="1,2", help="comma-separated process counts")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    return parser


def write_data(tmp: Path, rows: int, texts: int) -> tuple[Path, Path, Path]:
    with open(DATA / "sst2" / "train.tsv", encoding="utf-8") as f:
        lines = f.readlines()
    (tmp / "train.tsv").write_text("".join(lines[: rows + 1]), encoding="utf-8")
    (tmp / "val.tsv").write_text("".join(lines[:1] + lines[rows + 1 : rows + 501]), encoding="utf-8")
    sst2 = [line.split("\t")[0] for line in lines[1:]]
    with open(DATA / "agnews" / "train.tsv", encoding="utf-8") as f:
        agnews = [row[0] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    mixed = [t.replace("\n", " ") for pair in zip(sst2, agnews, strict=False) for t in pair][:texts]
    (tmp / "texts.txt").write_text("\n".join(mixed) + "\n", encoding="utf-8")
    return tmp / "train.tsv", tmp / "val.tsv", tmp / "texts.txt"


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lightbert.cli", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{command} failed: {result.stderr[-3000:]}")
    return seconds, result.stdout


def main() -> None:
    args = build_parser().parse_args()
    print(machine(), flush=True)
    counts = [int(n) for n in args.devices.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="lightbert-scale-"))
    train, val, texts = write_data(tmp, args.rows, args.texts)
    fits, checkpoint = {}, None
    for n in counts:
        root = tmp / f"runs-{n}"
        command = ["fit", f"--data.train={train}", f"--data.validation={val}", f"--data.batch_size={32 // n}"]
        command += ["--trainer.max_epochs=1", f"--trainer.devices={n}", f"--trainer.accelerator={args.accelerator}"]
        command += [f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"]
        if n > 1:
            command.append("--trainer.strategy=ddp")
        seconds, out = timed(command)
        accuracy = float(re.search(r"accuracy ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
        fits[n] = (seconds, accuracy)
        checkpoint = checkpoint or root / "version_0" / "checkpoints" / "last.ckpt"
        print(f"fit, {n} process(es): {seconds:.1f} s, validation accuracy {accuracy:.3f}", flush=True)
    predictions, outputs = {}, {}
    for n in counts:
        out = tmp / f"predictions-{n}.jsonl"
        command = ["predict", str(checkpoint), f"--input={texts}", f"--output={out}", f"--devices={n}"]
        if args.accelerator == "cpu":
            command.append("--device=cpu")
        predictions[n], _ = timed(command)
        outputs[n] = out.read_bytes()
        print(f"predict, {n} process(es): {predictions[n]:.1f} s", flush=True)
    one = counts[0]
    print(f"\n{args.rows} SST-2 rows (1 epoch, global batch 32), {args.texts} texts; whole commands\n")
    print(
        "| processes | fit s | samples/s | per process | vs 1 | accuracy | predict s | texts/s | per process | vs 1 |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in counts:
        fit_s, accuracy = fits[n]
        rate, text_rate = args.rows / fit_s, args.texts / predictions[n]
        speedup = predictions[one] / predictions[n]
        print(
            f"| {n} | {fit_s:.1f} | {rate:.1f} | {rate / n:.1f} | {fits[one][0] / fit_s:.2f}x | {accuracy:.3f} |"
            f" {predictions[n]:.1f} | {text_rate:.0f} | {text_rate / n:.0f} | {speedup:.2f}x |"
        )
    same = all(outputs[n] == outputs[one] for n in counts)
    print(f"\npredictions of every process count byte for byte the same: {same}")


if __name__ == "__main__":
    main()
