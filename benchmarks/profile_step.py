"""Where a lightbert training step's time goes, op by op (torch.profiler), and how much of it is matrix products.

    python benchmarks/profile_step.py --precision 32-true
    python benchmarks/profile_step.py --precision bf16-mixed

The bundled all-MiniLM-L6-v2 trained as ``lightbert fit`` trains it (ClassificationDataModule + SequenceClassifier
in a Lightning Trainer, SST-2 rows, batch 32, dropout on): ``--warmup`` steps run unprofiled, the next ``--steps``
are profiled (CPU activities). Prints the ops sorted by their own CPU time, then the summary that matters for
speeding a step up: milliseconds per step in matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``) and
outside them. Compare the summary lines of runs on one machine; the profiler itself slows the step a little.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from fit_peer import lightning_trainer
from measure import machine

from lightbert.datamodule import ClassificationDataModule
from lightbert.model import SequenceClassifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MATRIX_PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}


class ProfileSteps(pl.Callback):
    """Profiles training steps ``warmup`` to ``warmup + steps - 1`` and stops the run after them."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.profiler: torch.profiler.profile | None = None
        self.seconds = 0.0
        self.samples = 0

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
            self.started = time.perf_counter()
        if self.profiler is not None:
            self.samples += len(batch["labels"])

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup + self.steps - 1 and self.profiler is not None:
            self.seconds = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)
            trainer.should_stop = True


def sst2_file(rows: int) -> str:
    lines = (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[: rows + 1]
    path = Path(tempfile.mkdtemp()) / "train.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_readme.py, which checks the README's commands against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--row_limit", type=int, default=25, help="how many ops the table shows")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print(machine(), flush=True)
    torch.manual_seed(0)
    train = sst2_file(max(args.rows, (args.warmup + args.steps) * args.batch_size))
    data = ClassificationDataModule(train=train, validation=train, batch_size=args.batch_size, max_length=128)
    module = SequenceClassifier()
    profile = ProfileSteps(args.warmup, args.steps)
    trainer = lightning_trainer(max_epochs=1, precision=args.precision, callbacks=[profile])
    trainer.fit(module, data)
    assert profile.profiler is not None, "the run ended before the profiled steps (raise --rows)"
    averages = profile.profiler.key_averages()
    print(f"\nPROFILE {args.precision}: {profile.samples / profile.seconds:.1f} samples/s over {args.steps} steps")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.row_limit))
    total = sum(event.self_cpu_time_total for event in averages) / 1e3 / args.steps
    products = sum(event.self_cpu_time_total for event in averages if event.key in MATRIX_PRODUCTS) / 1e3 / args.steps
    copies = (
        sum(event.self_cpu_time_total for event in averages if event.key in {"aten::copy_", "aten::_to_copy"})
        / 1e3
        / args.steps
    )
    print(
        f"per step ({args.precision}, batch {args.batch_size}): {total:.1f} ms of CPU time, matrix products"
        f" {products:.1f} ms ({products / total:.0%}), outside them {total - products:.1f} ms"
        f" ({(total - products) / total:.0%}), of which copies and casts {copies:.1f} ms"
    )


if __name__ == "__main__":
    main()
