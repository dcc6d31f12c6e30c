"""Fine-tuning speed: HF Trainer, the plain Lightning recipe and lightbert, same model, data and settings.

    python benchmarks/fit.py --rows 4000 --repeats 3

Data: the first ``--rows`` rows of ../shared/data/sst2/train.tsv for training and the next ``--val_rows`` for a
validation split carved from the same file. Model: the bundled all-MiniLM-L6-v2, fp32, dropout on, batch 32,
AdamW lr 5e-5, 1 epoch, linear schedule. Each peer runs in its own process (so peak RSS is its own), in an order
that alternates between repeats; medians are reported with ratios to the Trainer at its best settings.

Peers (benchmarks/fit_peer.py): Trainer with dynamic padding + group_by_length (its best), Trainer defaults (dynamic
padding by its default collator, random order), Trainer padding to 128 (the common tutorial recipe), the plain
Lightning recipe (LightningModule around the HF model, padding to 128, dropout switched on), lightbert.
Opt-in peers (``--peers``): ``trainer-best-bf16`` (the Trainer at its best with ``bf16=True``) and ``lightbert-bf16``
(``precision="bf16-mixed"``), compared with the fp32 Trainer at its best like the others. ``--accelerator gpu``
runs every peer on the GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from measure import machine, run_child

PEER_SCRIPT = Path(__file__).with_name("fit_peer.py")
PEERS = ["trainer-best", "trainer-default", "trainer-pad128", "lightning-recipe", "lightbert"]
LABELS = {
    "trainer-best": "Trainer, dynamic padding + group_by_length",
    "trainer-default": "Trainer defaults (dynamic padding, random order)",
    "trainer-pad128": "Trainer, padding to 128",
    "lightning-recipe": "plain Lightning recipe (padding to 128)",
    "lightbert": "lightbert",
    "trainer-best-bf16": "Trainer, dynamic padding + group_by_length, bf16=True",
    "lightbert-bf16": "lightbert, precision bf16-mixed",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_readme.py, which checks the README's commands against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--val_rows", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from {', '.join(LABELS)}")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--json", help="write the results here too")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    print(machine(), flush=True)
    peers = args.peers.split(",")
    unknown = set(peers) - set(LABELS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    results: dict[str, list[dict]] = {p: [] for p in peers}
    for repeat in range(args.repeats):
        order = peers if repeat % 2 == 0 else list(reversed(peers))
        for peer in order:
            out = Path(f"/tmp/lightbert-fit-bench-{peer}.json")
            _, rss = run_child(
                [sys.executable, str(PEER_SCRIPT), peer, str(args.rows), str(args.val_rows), str(out), args.accelerator]
            )
            result = json.loads(out.read_text()) | {"peak_rss_mib": rss}
            results[peer].append(result)
            rate, accuracy = result["samples_per_s"], result["accuracy"]
            print(
                f"repeat {repeat + 1} {peer}: {rate:.1f} samples/s, accuracy {accuracy:.3f}, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    best = statistics.median(r["samples_per_s"] for r in results.get("trainer-best", results[peers[0]]))
    print(
        f"\n{args.rows} SST-2 rows, 1 epoch, batch 32, fp32 unless named, dropout on, {args.accelerator};"
        f" {args.repeats} repeats, medians\n"
    )
    print("| peer | samples/s | vs Trainer best | wall s | validation accuracy | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for peer, runs in results.items():
        rate = statistics.median(r["samples_per_s"] for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        accuracy = statistics.median(r["accuracy"] for r in runs)
        print(
            f"| {LABELS.get(peer, peer)} | {rate:.1f} | {rate / best:.2f}x | {seconds:.0f} | "
            f"{accuracy:.3f} | {max(r['peak_rss_mib'] for r in runs):.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
