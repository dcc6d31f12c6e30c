"""Time to accuracy: how soon the HF Trainer and lightbert reach a given SST-2 validation accuracy, in one run.

    python benchmarks/time_to_accuracy.py
    python benchmarks/time_to_accuracy.py --peers trainer-best,lightbert-recipe --recipe_precision bf16-mixed

Training data: ../shared/data/sst2/train.tsv (60,614 rows; ``--rows`` takes the first N). Every ``--eval_every``
training samples (and at the end), each peer's model is scored on ../shared/data/sst2/validation.tsv (6,735 rows)
by the same function (eval mode, inference mode, texts sorted by length, batch 64); the clock stops while it scores,
so the times are training time. A peer stops once it reaches the highest of ``--targets`` or its epochs end.

Peers, each in a process of its own, all from the bundled all-MiniLM-L6-v2:
- ``trainer-best``: the HF Trainer at its best CPU settings (benchmarks/fit.py): dynamic padding,
  ``group_by_length``, batch 32, AdamW lr 5e-5, 10% warmup then linear decay, fp32, ``--trainer_epochs`` epochs;
- ``lightbert-default``: what ``lightbert fit --data.train FILE`` trains with its defaults (the Python API with the
  same data module and model settings; its own per-epoch validation left out, as the Trainer's is);
- ``lightbert-recipe``: lightbert with the ``--recipe_*`` settings (default: the README's recipe).
Prints the CPU model and flags first, then each check as it happens, then a table of the time to each target.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fit_peer import lightning_trainer, trainer_arguments
from measure import machine, run_child

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PEERS = ["trainer-best", "lightbert-default", "lightbert-recipe"]


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_readme.py, which checks the README's commands against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from {', '.join(PEERS)}")
    parser.add_argument("--rows", type=int, default=0, help="training rows (0: the whole file)")
    parser.add_argument("--validation_rows", type=int, default=0, help="validation rows (0: the whole file)")
    parser.add_argument("--eval_every", type=int, default=8000, help="training samples between checks")
    parser.add_argument("--targets", default="0.89,0.90", help="comma-separated validation accuracies")
    parser.add_argument("--trainer_epochs", type=float, default=1.0)
    parser.add_argument("--recipe_precision", default="auto", help="auto: bf16-mixed where bf16 is fast, else fp32")
    parser.add_argument("--recipe_learning_rate", type=float, default=1e-4)
    parser.add_argument("--recipe_batch_size", type=int, default=32)
    parser.add_argument("--recipe_epochs", type=int, default=1)
    parser.add_argument("--recipe_warmup_ratio", type=float, default=0.06)
    parser.add_argument("--recipe_max_length", type=int, default=64)
    parser.add_argument("--child", nargs=2, metavar=("PEER", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the results here too")
    return parser


# -- in the peer's process --------------------------------------------------------------------------------------------


def read_sst2(name: str, rows: int) -> list[tuple[str, int]]:
    import csv

    with open(DATA / "sst2" / name, encoding="utf-8") as f:
        data = [(r[0], int(r[1])) for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    return data[:rows] if rows else data


class Checks:
    """The training clock (stopped while scoring) and the validation checks every ``every`` samples."""

    def __init__(self, every: int, top_target: float, score: Any) -> None:
        self.every, self.top_target, self.score = every, top_target, score
        self.history: list[dict[str, float]] = []
        self.training_seconds = 0.0
        self.next_check = every
        self.resumed = time.perf_counter()

    def start(self) -> None:
        self.resumed = time.perf_counter()

    def after_step(self, samples: int, model: Any, final: bool = False) -> bool:
        """Scores ``model`` when a check is due; True when the top target is reached (the peer may stop)."""
        if samples < self.next_check and not final:
            return False
        self.training_seconds += time.perf_counter() - self.resumed
        while self.next_check <= samples:
            self.next_check += self.every
        accuracy = self.score(model)
        self.history.append({"samples": samples, "seconds": self.training_seconds, "accuracy": accuracy})
        print(f"  {samples} samples, {self.training_seconds:.0f} s: accuracy {accuracy:.4f}", flush=True)
        self.resumed = time.perf_counter()
        return accuracy >= self.top_target


def scorer(tokenizer: Any, validation: list[tuple[str, int]]) -> Any:
    import torch

    order = sorted(range(len(validation)), key=lambda i: len(validation[i][0]))
    texts = [validation[i][0] for i in order]
    labels = [validation[i][1] for i in order]

    def score(model: Any) -> float:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(texts), 64):
                inputs = tokenizer(texts[start : start + 64], padding=True, truncation=True, max_length=128,
                                   return_tensors="pt")  # fmt: skip
                predicted = model(**inputs.to(device)).logits.argmax(-1).tolist()
                correct += sum(p == y for p, y in zip(predicted, labels[start : start + 64], strict=True))
        model.train(was_training)
        return correct / len(texts)

    return score


def run_trainer(args: argparse.Namespace, train: list[tuple[str, int]], checks: Checks, base: str) -> None:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
    )

    tokenizer = AutoTokenizer.from_pretrained(base)
    enc = tokenizer([t for t, _ in train], truncation=True, max_length=128)
    dataset = [{k: enc[k][i] for k in enc} | {"labels": train[i][1]} for i in range(len(train))]
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, dtype=torch.float32)

    class Check(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            checks.start()

        def on_step_end(self, training_args: Any, state: Any, control: Any, **_: Any) -> None:
            samples = min(state.global_step * 32, int(len(train) * args.trainer_epochs))
            final = state.global_step >= state.max_steps
            if checks.after_step(samples, model, final) or final:
                control.should_training_stop = True

    training_args = trainer_arguments(tempfile.mkdtemp(), num_train_epochs=args.trainer_epochs, logging_steps=100)
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[Check()])  # fmt: skip
    trainer.train()


def recipe_precision(asked: str) -> str:
    from lightbert.devices import has_bf16_arithmetic

    if asked != "auto":
        return asked
    return "bf16-mixed" if has_bf16_arithmetic() else "32-true"


def run_lightbert(args: argparse.Namespace, peer: str, train: list[tuple[str, int]], checks: Checks) -> dict:
    import lightning.pytorch as pl

    from lightbert.datamodule import ClassificationDataModule
    from lightbert.model import SequenceClassifier

    path = Path(tempfile.mkdtemp()) / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in train), encoding="utf-8")
    if peer == "lightbert-recipe":
        settings = {
            "precision": recipe_precision(args.recipe_precision),
            "learning_rate": args.recipe_learning_rate,
            "batch_size": args.recipe_batch_size,
            "epochs": args.recipe_epochs,
            "warmup_ratio": args.recipe_warmup_ratio,
            "max_length": args.recipe_max_length,
        }
    else:
        settings = {"precision": "32-true", "learning_rate": 5e-5, "batch_size": 32, "epochs": 2, "warmup_ratio": 0.1,
                    "max_length": 128}  # fmt: skip
    data = ClassificationDataModule(train=str(path), validation=str(path), batch_size=settings["batch_size"],
                                    max_length=settings["max_length"])  # fmt: skip
    module = SequenceClassifier(learning_rate=settings["learning_rate"], warmup_ratio=settings["warmup_ratio"])

    class Check(pl.Callback):
        samples = 0

        def on_train_start(self, *_: Any) -> None:
            checks.start()

        def on_train_batch_end(self, trainer: pl.Trainer, _module: Any, _out: Any, batch: Any, _i: int) -> None:
            self.samples += len(batch["labels"])
            final = self.samples >= len(train) * settings["epochs"]
            if checks.after_step(self.samples, module.model, final):
                trainer.should_stop = True

    trainer = lightning_trainer(max_epochs=settings["epochs"], precision=settings["precision"], callbacks=[Check()])
    pl.seed_everything(42, verbose=False)
    trainer.fit(module, data)
    return settings


def child(args: argparse.Namespace, peer: str, out: str) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    from lightbert.bundled import default_base_model

    base = default_base_model()
    train = read_sst2("train.tsv", args.rows)
    validation = read_sst2("validation.tsv", args.validation_rows)
    targets = [float(t) for t in args.targets.split(",")]
    checks = Checks(args.eval_every, max(targets), scorer(AutoTokenizer.from_pretrained(base), validation))
    settings: dict = {}
    if peer == "trainer-best":
        run_trainer(args, train, checks, base)
    else:
        settings = run_lightbert(args, peer, train, checks)
    Path(out).write_text(json.dumps({"history": checks.history, "settings": settings}))


# -- the driver -------------------------------------------------------------------------------------------------------


def time_to(history: list[dict[str, float]], target: float) -> float | None:
    return next((check["seconds"] for check in history if check["accuracy"] >= target), None)


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.child:
        return child(args, *args.child)
    print(machine(), flush=True)
    peers = args.peers.split(",")
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    targets = [float(t) for t in args.targets.split(",")]
    forwarded = [f"--{key}={value}" for key, value in vars(args).items() if key not in ("child", "json")]
    results = {}
    for peer in peers:
        print(f"{peer}:", flush=True)
        out = Path(tempfile.mkdtemp()) / f"{peer}.json"
        wall, rss = run_child([sys.executable, __file__, *forwarded, "--child", peer, str(out)])
        results[peer] = json.loads(out.read_text()) | {"wall": wall, "peak_rss_mib": rss}
    rows = args.rows or "60,614"
    print(f"\nSST-2 training rows: {rows}; accuracy on the {args.validation_rows or '6,735'} rows of validation.tsv"
          f" every {args.eval_every} samples; seconds of training (scoring excluded)\n")  # fmt: skip
    header = " | ".join(f"s to {t:.2f}" for t in targets)
    print(f"| peer | settings | {header} | best accuracy (at s) | samples seen | peak RSS MiB |")
    print("| --- | --- | " + " | ".join("---:" for _ in targets) + " | ---: | ---: | ---: |")
    for peer, result in results.items():
        history = result["history"]
        best = max(history, key=lambda check: check["accuracy"])
        reached = " | ".join(f"{s:.0f}" if (s := time_to(history, t)) is not None else "not reached" for t in targets)
        settings = ", ".join(f"{k} {v}" for k, v in result["settings"].items()) or (
            f"lr 5e-5, batch 32, {args.trainer_epochs:g} epoch(s), fp32"
        )
        print(f"| {peer} | {settings} | {reached} | {best['accuracy']:.4f} ({best['seconds']:.0f}) |"
              f" {history[-1]['samples']} | {result['peak_rss_mib']:.0f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
