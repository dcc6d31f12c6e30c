"""What verifying a checkpoint's zip checksums costs: ``read_checkpoint`` with and without the CRC-32 check, on a
checkpoint of the bundled MiniLM (its weights, 87 MB; or ``--checkpoint PATH``), and a plain ``torch.load``.

    python benchmarks/checksums.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from measure import machine

from lightbert import checkpoint as checkpoint_module


def minilm_checkpoint(directory: Path) -> Path:
    """A recipe-style checkpoint holding the bundled MiniLM's weights."""
    from transformers import AutoModelForSequenceClassification

    from lightbert.bundled import default_base_model

    model = AutoModelForSequenceClassification.from_pretrained(default_base_model(), num_labels=2)
    path = directory / "minilm.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def best_time(action: Any, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint to read (default: MiniLM's weights)")
    parser.add_argument("--repeats", type=int, default=5)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or minilm_checkpoint(Path(tmp))
        size = path.stat().st_size / 1e6
        path.read_bytes()  # in the page cache for every variant
        checked = best_time(lambda: checkpoint_module.read_checkpoint(path), args.repeats)
        with mock.patch.object(checkpoint_module, "check_zip_checksums", lambda path: None):
            unchecked = best_time(lambda: checkpoint_module.read_checkpoint(path), args.repeats)
        crc_only = best_time(lambda: checkpoint_module.check_zip_checksums(path), args.repeats)
        plain = best_time(lambda: torch.load(path, map_location="cpu", weights_only=True), args.repeats)
    print(f"checkpoint: {path.name}, {size:.0f} MB; best and median of {args.repeats}")
    print("| read | best s | median s |")
    print("| --- | ---: | ---: |")
    for name, (best, median) in (
        ("torch.load(weights_only=True)", plain),
        ("read_checkpoint without the checksums", unchecked),
        ("read_checkpoint (checksums verified)", checked),
        ("the checksums alone", crc_only),
    ):
        print(f"| {name} | {best:.3f} | {median:.3f} |")
    print(f"checksums cost {crc_only[0]:.3f} s, {size / crc_only[0]:.0f} MB/s")


if __name__ == "__main__":
    main()
