"""What each fast path in lightbert/fastpath.py buys in a MiniLM training step, measured in one process.

    python benchmarks/fastpath.py --steps 60

Kernels first: PyTorch's dropout vs lightbert's on a 32 x 20 x 384 activation, and a fresh 47 MB embedding
gradient (torch.zeros) vs zeroing a resident one. Then training steps (forward, backward, fused AdamW) of the
bundled all-MiniLM-L6-v2 on SST-2 batches of 32 grouped by length like the Trainer's group_by_length, for the
plain HF model and with the fast paths added one by one; the models take the same batches in alternating order,
so the machine's drift hits them alike. ``--compile`` adds the plain model under ``torch.compile`` (inductor,
dynamic shapes), a candidate lightbert does not use, with the time its first step takes to compile.
``--baseline FILE`` adds a model with all the fast paths of another version of ``lightbert/fastpath.py`` (for example
``git show REV:lightbert/fastpath.py > /tmp/fastpath_rev.py``), to measure a change to them in the same run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.machinery
import importlib.util
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
from measure import machine

from lightbert import fastpath

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = {
    "plain HF model": [],
    "+ cheaper dropout": [fastpath.use_cpu_dropout],
    "+ first position only": [fastpath.use_cpu_dropout, fastpath.use_first_position_only],
    "+ resident embedding gradient": [
        fastpath.use_cpu_dropout,
        fastpath.use_first_position_only,
        fastpath.use_resident_embedding_gradient,
    ],
    "+ GELU recomputed in backward (saves memory)": [
        fastpath.use_cpu_dropout,
        fastpath.use_first_position_only,
        fastpath.use_resident_embedding_gradient,
        fastpath.use_gelu_recompute,
    ],
}
COMPILED = "plain HF model, torch.compile (not used)"
ALL_FAST_PATHS = [switch.__name__ for switch in CONFIGS["+ GELU recomputed in backward (saves memory)"]]


def milliseconds(function, repeats: int = 50) -> float:
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3


def batches(tokenizer, count: int) -> list[dict[str, torch.Tensor]]:
    with open(DATA / "sst2" / "train.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:4001]
    encoded = tokenizer([r[0] for r in rows], truncation=True, max_length=128)
    labels = torch.tensor([int(r[1]) for r in rows])
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    groups = []
    for start in range(0, len(order), 32 * 50):  # mega-batches of 50 batches sorted by length, as group_by_length
        mega = sorted(order[start : start + 32 * 50], key=lambda i: -len(encoded["input_ids"][i]))
        groups += [mega[i : i + 32] for i in range(0, len(mega), 32)]
    random.Random(0).shuffle(groups)
    result = []
    for group in groups[:count]:
        batch = tokenizer.pad(
            {k: [encoded[k][i] for i in group] for k in ("input_ids", "attention_mask", "token_type_ids")},
            return_tensors="pt",
        )
        result.append(dict(batch) | {"labels": labels[group]})
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_readme.py, which checks the README's commands against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--compile", action="store_true", help="also measure the plain model under torch.compile (not used)"
    )
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--baseline", type=Path, help="another version's fastpath.py: its fast paths side by side")
    return parser


def baseline_switches(path: Path) -> list[Any]:
    """All the fast paths of the ``fastpath.py`` at ``path``, its attention registered under a name of its own."""
    loader = importlib.machinery.SourceFileLoader("baseline_fastpath", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None  # a file loader always gives one
    module: Any = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module.ATTENTION_NAME = f"{fastpath.ATTENTION_NAME}_baseline"
    return [getattr(module, name) for name in ALL_FAST_PATHS]


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.baseline and not args.baseline.is_file():
        parser.error(f"--baseline {args.baseline}: no such file")
    print(machine(), flush=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    from lightbert.bundled import default_base_model

    logging.set_verbosity_error()
    x = torch.randn(32, 20, 384)
    print(
        f"dropout p=0.1 on 32x20x384: torch {milliseconds(lambda: torch.nn.functional.dropout(x, 0.1, True)):.2f} ms, "
        f"lightbert {milliseconds(lambda: fastpath.dropout(x, 0.1, True)):.2f} ms"
    )
    resident = torch.empty(30522, 384)
    print(
        f"47 MB embedding gradient: fresh torch.zeros {milliseconds(lambda: torch.zeros(30522, 384), 20):.1f} ms, "
        f"zeroing a resident buffer {milliseconds(lambda: resident.zero_(), 20):.1f} ms"
    )

    base = default_base_model()
    data = batches(AutoTokenizer.from_pretrained(base), args.steps + 2)
    torch.manual_seed(0)
    plain = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, dtype=torch.float32)
    configs = dict(CONFIGS)
    if args.baseline:
        configs[f"all fast paths of {args.baseline.name}"] = baseline_switches(args.baseline)
    runs = {}
    for name, switches in configs.items():
        model = copy.deepcopy(plain).train()
        for switch in switches:
            switch(model)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True))
    if args.compile:
        model = copy.deepcopy(plain).train()
        runs[COMPILED] = (
            torch.compile(model, dynamic=True),
            torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True),
        )
    seconds = dict.fromkeys(runs, 0.0)
    first_step = {}
    for step, batch in enumerate(data):
        for name in list(runs) if step % 2 == 0 else list(reversed(runs)):
            model, optimizer = runs[name]
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 2:  # the first steps allocate optimizer state (and compile)
                seconds[name] += time.perf_counter() - start
            elif step == 0:
                first_step[name] = time.perf_counter() - start
    samples = sum(len(b["labels"]) for b in data[2:])
    first = samples / seconds["plain HF model"]
    threads = torch.get_num_threads()
    print(f"\n{args.steps} training steps of MiniLM, batch 32, SST-2, {args.precision}, dropout on, {threads} threads")
    print()
    print("| model | samples/s | vs plain |")
    print("| --- | ---: | ---: |")
    for name, total in seconds.items():
        print(f"| {name} | {samples / total:.1f} | {samples / total / first:.2f}x |")
    if args.compile:
        compiling, eager = first_step[COMPILED], first_step["plain HF model"]
        print(f"\ntorch.compile's first step (compiling): {compiling:.1f} s, against {eager:.2f} s eager")


if __name__ == "__main__":
    main()
