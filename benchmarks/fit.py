"""Fine-tuning speed: HF Trainer, the plain Lightning recipe and lightbert, same model, data and settings.

    python benchmarks/fit.py --rows 4000 --repeats 3

Data: the first ``--rows`` rows of ../shared/data/sst2/train.tsv for training and the next ``--val_rows`` for a
validation split carved from the same file. Model: the bundled all-MiniLM-L6-v2, fp32, dropout on, batch 32,
AdamW lr 5e-5, 1 epoch, linear schedule. Each peer runs in its own process (so peak RSS is its own), in an order
that alternates between repeats; medians are reported with ratios to the Trainer at its best settings.

Peers: Trainer with dynamic padding + group_by_length (its best), Trainer defaults (dynamic padding by its default
collator, random order), Trainer padding to 128 (the common tutorial recipe), the plain Lightning recipe (LightningModule around the HF model, padding to 128, dropout switched on), lightbert.
Opt-in peers (``--peers``): ``trainer-best-bf16`` (the Trainer at its best with ``bf16=True``) and ``lightbert-bf16``
(``precision="bf16-mixed"``), compared with the fp32 Trainer at its best like the others. ``--accelerator gpu``
runs every peer on the GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import textwrap
from pathlib import Path

from measure import run_child

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
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


def sst2(rows: int, val_rows: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    with open(DATA / "sst2" / "train.tsv", encoding="utf-8") as f:
        data = [(r[0], int(r[1])) for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    return data[:rows], data[rows:rows + val_rows]


def accuracy(model, tokenizer, val) -> float:
    import torch

    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(val), 64):
            chunk = val[start:start + 64]
            inputs = tokenizer([t for t, _ in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt")
            predicted = model(**inputs.to(device)).logits.argmax(-1).tolist()
            correct += sum(p == y for p, (_, y) in zip(predicted, chunk))
    return correct / len(val)


PEER_CODE = textwrap.dedent('''
    import json, os, sys, time, csv
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    sys.path.insert(0, {bench_dir!r})
    from fit import accuracy, sst2
    from lightbert.hf import default_base_model
    peer, rows, val_rows, out, accelerator = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    bf16 = peer.endswith("-bf16")
    base = default_base_model()
    train, val = sst2(rows, val_rows)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if peer.startswith("trainer"):
        from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
        pad128, grouped = peer == "trainer-pad128", peer in ("trainer-best", "trainer-best-bf16")
        enc = tokenizer([t for t, _ in train], truncation=True, max_length=128, padding="max_length" if pad128 else False)
        dataset = [dict(input_ids=enc["input_ids"][i], attention_mask=enc["attention_mask"][i], token_type_ids=enc["token_type_ids"][i], labels=train[i][1]) for i in range(len(train))]
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, dtype=torch.float32)
        args = TrainingArguments(output_dir=out + ".trainer", per_device_train_batch_size=32, learning_rate=5e-5, num_train_epochs=1,
                                 train_sampling_strategy="group_by_length" if grouped else "random", save_strategy="no", report_to=[], logging_steps=50, seed=0,
                                 warmup_steps=0.1, weight_decay=0.01, use_cpu=accelerator == "cpu", bf16=bf16, disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer))
        start = time.perf_counter(); trainer.train(); seconds = time.perf_counter() - start
    elif peer == "lightning-recipe":
        import lightning.pytorch as pl
        enc = tokenizer([t for t, _ in train], truncation=True, max_length=128, padding="max_length", return_tensors="pt")
        data = torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], torch.tensor([y for _, y in train]))
        class Recipe(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, dtype=torch.float32)
            def on_train_start(self):
                self.model.train()  # the recipe's fix for Lightning >= 2.2 keeping eval mode
            def training_step(self, batch, i):
                ids, mask, types, labels = batch
                loss = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
                self.log("train_loss", loss)
                return loss
            def configure_optimizers(self):
                return torch.optim.AdamW(self.parameters(), lr=5e-5, weight_decay=0.01)
        module = Recipe()
        trainer = pl.Trainer(max_epochs=1, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
        start = time.perf_counter(); trainer.fit(module, loader); seconds = time.perf_counter() - start
        model = module.model
    else:
        import lightning.pytorch as pl, tempfile, pathlib
        from lightbert.datamodule import ClassificationDataModule
        from lightbert.model import SequenceClassifier
        tmp = pathlib.Path(tempfile.mkdtemp())
        path = tmp / "train.tsv"
        path.write_text("sentence\\tlabel\\n" + "".join(f"{{t}}\\t{{y}}\\n" for t, y in train), encoding="utf-8")
        dm = ClassificationDataModule(train=str(path), validation=str(path), batch_size=32, max_length=128)
        module = SequenceClassifier(learning_rate=5e-5)
        trainer = pl.Trainer(max_epochs=1, accelerator=accelerator, devices=1, precision="bf16-mixed" if bf16 else "32-true",
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
        dm.setup("fit")
        module.take_labels_from(dm); module.configure_classifier()  # the model is built before timing, as the other peers'
        start = time.perf_counter(); trainer.fit(module, dm); seconds = time.perf_counter() - start
        model, tokenizer = module.model, module.tokenizer
    json.dump({{"seconds": seconds, "samples_per_s": len(train) / seconds, "accuracy": accuracy(model, tokenizer, val)}}, open(out, "w"))
''')

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--val_rows", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from {', '.join(LABELS)}")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    peers = args.peers.split(",")
    unknown = set(peers) - set(LABELS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    code = PEER_CODE.format(bench_dir=str(Path(__file__).parent))
    results: dict[str, list[dict]] = {p: [] for p in peers}
    for repeat in range(args.repeats):
        order = peers if repeat % 2 == 0 else list(reversed(peers))
        for peer in order:
            out = Path(f"/tmp/lightbert-fit-bench-{peer}.json")
            _, rss = run_child([sys.executable, "-c", code, peer, str(args.rows), str(args.val_rows), str(out), args.accelerator])
            result = json.loads(out.read_text()) | {"peak_rss_mib": rss}
            results[peer].append(result)
            print(f"repeat {repeat + 1} {peer}: {result['samples_per_s']:.1f} samples/s, accuracy {result['accuracy']:.3f}, "
                  f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    best = statistics.median(r["samples_per_s"] for r in results.get("trainer-best", results[peers[0]]))
    print(f"\n{args.rows} SST-2 rows, 1 epoch, batch 32, fp32 unless named, dropout on, {args.accelerator}; {args.repeats} repeats, medians\n")
    print("| peer | samples/s | vs Trainer best | wall s | validation accuracy | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for peer, runs in results.items():
        rate = statistics.median(r["samples_per_s"] for r in runs)
        print(f"| {LABELS.get(peer, peer)} | {rate:.1f} | {rate / best:.2f}x | {statistics.median(r['seconds'] for r in runs):.0f} | "
              f"{statistics.median(r['accuracy'] for r in runs):.3f} | {max(r['peak_rss_mib'] for r in runs):.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
