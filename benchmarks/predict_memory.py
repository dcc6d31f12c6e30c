"""Memory of ``lightbert predict --input`` (or ``lightbert evaluate``) as the file grows: both stream, so peak RSS
should stay flat.

    python benchmarks/predict_memory.py --lines 10000,100000,1000000
    python benchmarks/predict_memory.py --lines 100000,1000000 --command evaluate

For ``evaluate`` the file is a labelled TSV (each text with a label of the model's); the report's tallies are
counts, histograms and, for regression only, two columns of numbers.

Builds text files of the given numbers of lines from real texts (../shared/data SST-2 sentences and AG News
articles alternating, cycled, so every size has the same mix of lengths), runs the whole command on each
(``lightbert predict MODEL --input FILE --output OUT``) and reports wall time, texts/s and peak RSS (measured by
wait4 on the child). For the largest file it also shows the peak as the run went on (the child's VmHWM, sampled
every 0.25 s): a streaming command reaches its peak early and keeps it, where one that held the file would climb.
The model is a small random BERT (hidden 64, 2 layers) with the MiniLM tokenizer unless ``--model`` is given, so
a million lines take minutes, not hours: memory flatness is a property of the streaming, not of the model size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from measure import machine, peak_by, run_child_traced

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def real_texts() -> list[str]:
    with open(DATA / "sst2" / "train.tsv", encoding="utf-8") as f:
        sst2 = [r[0] for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    with open(DATA / "agnews" / "train.tsv", encoding="utf-8") as f:
        agnews = [r[0] for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    mixed = [
        text for pair in zip(sst2[:20000], agnews[:20000], strict=False) for text in pair
    ]  # the same mix in every file size
    return [t.replace("\n", " ") for t in mixed]


def small_model(directory: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lightbert.bundled import default_base_model

    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_readme.py, which checks the README's commands against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", default="10000,100000,1000000", help="comma-separated file sizes in lines")
    parser.add_argument("--model", help="checkpoint or HF directory (default: a small random BERT)")
    parser.add_argument("--command", default="predict", choices=["predict", "evaluate"])
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    print(machine(), flush=True)
    sizes = [int(n) for n in args.lines.split(",")]
    texts = real_texts()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or str(small_model(tmp / "model"))
        name = args.model or "small random BERT (hidden 64, 2 layers, MiniLM tokenizer)"
        print(f"lightbert {args.command}; model: {name}; texts: SST-2 and AG News alternating, cycled")
        print("\n| lines | file MiB | wall s | texts/s | peak RSS MiB |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for n in sizes:
            path = tmp / (f"texts-{n}.txt" if args.command == "predict" else f"labelled-{n}.tsv")
            with open(path, "w", encoding="utf-8") as f:
                for i in range(n):
                    text = texts[i % len(texts)].replace("\t", " ")
                    f.write(
                        text + "\n" if args.command == "predict" else f"{text}\t{('negative', 'positive')[i % 2]}\n"
                    )
            out = tmp / f"out-{n}.jsonl" if args.command == "predict" else tmp / f"report-{n}"
            command = [sys.executable, "-m", "lightbert.cli", args.command, model, "--input", str(path)]
            command += ["--output", str(out)] if args.command == "predict" else ["--output_dir", str(out)]
            seconds, rss, trace = run_child_traced(command, env=os.environ | {"HF_HUB_OFFLINE": "1"})
            if args.command == "predict":
                with open(out, "rb") as f:
                    written = sum(1 for _ in f)
            else:
                written = json.loads((out / "report.json").read_text())["rows"]
            if written != n:
                sys.exit(f"{written} records for {n} lines")
            print(
                f"| {n:,} | {path.stat().st_size / 2**20:.0f} | {seconds:.0f} | {n / seconds:,.0f} | {rss:.0f} |",
                flush=True,
            )
            path.unlink()
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        shares = (0.1, 0.25, 0.5, 0.75, 1.0)
        print(f"\nPeak RSS so far, as the {sizes[-1]:,}-line run went on:\n")
        print("| share of the run's time | " + " | ".join(f"{share:.0%}" for share in shares) + " |")
        print("| --- |" + " ---: |" * len(shares))
        print("| peak RSS MiB | " + " | ".join(f"{peak_by(trace, share * seconds):.0f}" for share in shares) + " |")


if __name__ == "__main__":
    main()
