"""Prediction speed: transformers.pipeline vs lightbert on the same model, texts and machine, in one run.

    python benchmarks/predict.py --model runs/version_0/checkpoints/last.ckpt --texts 8000 --repeats 3

Texts: the first N/2 sentences of ../shared/data/sst2/validation.tsv and the first N/2 articles of
../shared/data/agnews/train.tsv (real data, short and long). Measured, alternating, ``--repeats`` times, median
reported: pipeline(batch_size=32), pipeline one text at a time (on a subset), lightbert fp32 (and, when asked,
lightbert bf16 or int8 with plain torch.ao int8 beside it, or ONNX Runtime fp32 and int8, or lightbert with
PyTorch's own linear layers instead of its packed oneDNN products, with their label agreement with fp32).
Then whole commands (`lightbert predict --input FILE` vs a script calling pipeline on the same file), with wall
time and peak RSS, and start-up (`lightbert predict MODEL "one text"` vs importing torch+transformers and loading
the model). Prints a table with ratios, label agreement and the fraction of the fp32 FLOP floor reached.
``--device cuda`` runs both sides on the GPU (pipeline(device=...), lightbert --device); int8 and ONNX Runtime
are CPU candidates.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from measure import machine, run_child

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def load_texts(n: int) -> list[str]:
    def column(path: Path, index: int, skip_header: bool) -> list[str]:
        with open(path, encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [r[index] for r in rows[1 if skip_header else 0 :]]

    sst2 = column(DATA / "sst2" / "validation.tsv", 0, True)[: n // 2]
    agnews = column(DATA / "agnews" / "train.tsv", 0, False)[: n - n // 2]
    return sst2 + agnews


def model_directory(model: str | None, tmp: Path) -> tuple[str, str]:
    """An HF directory both sides load (exported from a lightbert checkpoint if one is given), and a label."""
    if model and Path(model).is_dir():
        return model, model
    if model:
        from lightbert.export import export

        export(model, tmp / "model")
        return str(tmp / "model"), model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightbert.bundled import default_base_model

    torch.manual_seed(0)
    base = default_base_model()
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=2).save_pretrained(tmp / "model")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp / "model")
    return str(tmp / "model"), "bundled all-MiniLM-L6-v2 with a random 2-label head"


def fp32_peak_flops(device: str = "cpu") -> float:
    """Measured fp32 matmul throughput of this machine (FLOP/s), the denominator of the FLOP floor: on a CPU the
    faster of PyTorch's own product (MKL) and oneDNN's with a packed weight (what lightbert predicts with)."""
    size = 1024 if device == "cpu" else 8192
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    products = [lambda: a @ b]
    if device == "cpu":
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), size)
        products.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    best = 0.0
    for product in products:
        for _ in range(3):
            product()
        if device != "cpu":
            torch.cuda.synchronize()
        start, n = time.perf_counter(), 30
        for _ in range(n):
            product()
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 * n / (time.perf_counter() - start))
    return best


def model_flops(classifier, texts: list[str]) -> float:
    """Forward FLOPs without padding: 2 x linear weights per token, plus attention scores and mixing."""
    config = classifier.model.config
    linear = sum(m.weight.numel() for m in classifier.model.modules() if isinstance(m, torch.nn.Linear))
    items, _ = classifier.encode(texts)
    lengths = [len(i["input_ids"]) for i in items]
    d, layers = config.hidden_size, config.num_hidden_layers
    return sum(2 * linear * n + 4 * layers * n * n * d for n in lengths)


def int8_classifier(classifier):
    """The classifier with every linear layer quantized to int8 (dynamic activations, per-channel weights)."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        classifier.model = quantize_dynamic(
            classifier.model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )
    return classifier


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX Runtime session behind the HF model interface the Classifier calls (config, forward -> .logits)."""

    def __init__(self, session, config) -> None:
        super().__init__()
        self.session, self.config = session, config
        self.inputs = {i.name for i in session.get_inputs()}

    def forward(self, **inputs):
        outputs = self.session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
        return SimpleNamespace(logits=torch.from_numpy(outputs[0]))


def onnxruntime_classifier(directory: str, tmp: Path, quantize: bool):
    """The classifier run by ONNX Runtime: the HF model exported to ONNX, its attention, LayerNorm and GELU fused
    by ORT's transformer optimizer, and with ``quantize`` its matrix products in int8 (dynamic, per-channel)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    from transformers import AutoModelForSequenceClassification

    import lightbert

    fused = tmp / "model-fused.onnx"
    if not fused.exists():
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.config.type_vocab_size > 1 else [])
        example = {name: torch.ones(2, 16, dtype=torch.long) for name in names}
        torch.onnx.export(
            model,
            (),
            tmp / "model.onnx",
            kwargs=example,
            input_names=names,
            output_names=["logits"],
            dynamic_axes={name: {0: "batch", 1: "length"} for name in names},
            dynamo=False,
            opset_version=17,
        )
        optimizer.optimize_model(
            str(tmp / "model.onnx"),
            model_type="bert",
            num_heads=model.config.num_attention_heads,
            hidden_size=model.config.hidden_size,
        ).save_model_to_file(str(fused))
    path = fused
    if quantize:
        path = tmp / "model-int8.onnx"
        quantize_dynamic(
            fused,
            path,
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )  # the fused ops carry no type
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    classifier = lightbert.load(directory)
    classifier.model = OnnxRuntimeModel(session, classifier.model.config)
    classifier._forward_args = classifier.model.inputs  # the Classifier passes only what the graph takes
    return classifier


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


PIPELINE_SCRIPT = textwrap.dedent("""
    import json, sys
    from transformers import pipeline
    texts = open(sys.argv[2], encoding="utf-8").read().splitlines()
    classify = pipeline("text-classification", model=sys.argv[1], top_k=None, device=sys.argv[4])
    with open(sys.argv[3], "w", encoding="utf-8") as out:
        for record in classify(texts, batch_size=32, truncation=True):
            out.write(json.dumps(record) + "\\n")
""")


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_readme.py, which checks the README's commands against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a lightbert .ckpt or an HF directory (default: MiniLM with a random head)")
    parser.add_argument("--texts", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", type=int, default=300, help="texts for the one-at-a-time peer")
    parser.add_argument("--bf16", action="store_true", help="also measure lightbert --precision bf16")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also measure lightbert --precision int8 and, beside it, plain torch.ao dynamic quantization of every"
        " linear layer (not offered)",
    )
    parser.add_argument(
        "--onnxruntime",
        action="store_true",
        help="also measure ONNX Runtime fp32 and int8 (fused graph; pip install onnx onnxruntime), candidates"
        " not offered",
    )
    parser.add_argument(
        "--plain_products",
        action="store_true",
        help="also measure lightbert with PyTorch's own linear layers instead of packed oneDNN products (fp32, and"
        " bf16 with --bf16): what the packing buys",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where both sides run")
    parser.add_argument("--json", help="write the results here too")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    print(machine(), flush=True)
    if args.device != "cpu" and (args.int8 or args.onnxruntime):
        parser.error("--int8 and --onnxruntime are CPU candidates: use them with --device cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    import lightbert

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    texts = load_texts(args.texts)
    tmp = Path(tempfile.mkdtemp(prefix="lightbert-bench-"))
    directory, model_name = model_directory(args.model, tmp)
    classify = pipeline("text-classification", model=directory, top_k=None, device=args.device)
    classifier = lightbert.load(directory).to(args.device)
    variants = {}  # faster, lower-precision candidates, compared with lightbert fp32
    if args.bf16:
        variants["lightbert bf16"] = lightbert.load(directory).to(args.device).set_precision("bf16")
    if args.plain_products:
        from lightbert.packing import use_plain_linears

        for precision in ("fp32", "bf16") if args.bf16 else ("fp32",):
            plain = lightbert.load(directory).to(args.device).set_precision(precision)
            use_plain_linears(plain.model)
            variants[f"lightbert {precision}, PyTorch's own products"] = plain
    if args.int8:
        variants["lightbert int8"] = lightbert.load(directory).set_precision("int8")
        variants["int8, plain torch.ao, every linear (not offered)"] = int8_classifier(lightbert.load(directory))
    if args.onnxruntime:
        variants["ONNX Runtime fp32 (not offered)"] = onnxruntime_classifier(directory, tmp, quantize=False)
        variants["ONNX Runtime int8 (not offered)"] = onnxruntime_classifier(directory, tmp, quantize=True)
    single = texts[:: max(1, len(texts) // args.single)][: args.single]

    times: dict[str, list[float]] = {"pipeline, batch 32": [], "pipeline, one text at a time": [], "lightbert fp32": []}
    times |= {name: [] for name in variants}
    for _ in range(args.repeats):
        times["pipeline, batch 32"].append(len(texts) / timed(lambda: classify(texts, batch_size=32, truncation=True)))
        times["pipeline, one text at a time"].append(
            len(single) / timed(lambda: [classify(t, truncation=True) for t in single])
        )
        times["lightbert fp32"].append(len(texts) / timed(lambda: classifier.predict(texts, batch_size=32)))
        for name, variant in variants.items():
            times[name].append(len(texts) / timed(lambda variant=variant: variant.predict(texts, batch_size=32)))

    # Agreement with the pipeline (fp32 eager) on every text.
    theirs = classify(texts, batch_size=32, truncation=True)
    ours = classifier.predict(texts, batch_size=32)
    pairs = list(zip(theirs, ours, strict=True))
    agreement = sum(max(t, key=lambda r: r["score"])["label"] == o["label"] for t, o in pairs) / len(texts)
    max_prob_difference = max(
        abs({r["label"]: r["score"] for r in t}[name] - p) for t, o in pairs for name, p in o["probs"].items()
    )
    sst2_count = args.texts // 2
    variant_agreement = {}  # with lightbert fp32: on the SST-2 sentences, on all texts, largest probability difference
    for name, variant in variants.items():
        predicted = variant.predict(texts, batch_size=32)
        compared = list(zip(ours, predicted, strict=True))
        same = [a["label"] == b["label"] for a, b in compared]
        difference = max(abs(a["probs"][label] - b["probs"][label]) for a, b in compared for label in a["probs"])
        variant_agreement[name] = (sum(same[:sst2_count]) / sst2_count, sum(same) / len(same), difference)

    peak = fp32_peak_flops(args.device)
    flops = model_flops(classifier, texts)
    baseline = statistics.median(times["pipeline, batch 32"])
    sentences, articles = args.texts // 2, args.texts - args.texts // 2
    print(
        f"\nmodel: {model_name}; {len(texts)} texts ({sentences} SST-2 sentences + {articles} AG News articles);"
        f" {torch.get_num_threads()} threads, device {args.device}; {args.repeats} repeats, medians"
    )
    print(
        f"fp32 matmul peak measured: {peak / 1e9:.0f} GFLOP/s; model work: {flops / 1e9:.0f} GFLOP (no padding)"
        f" -> floor {len(texts) / (flops / peak):.0f} texts/s\n"
    )
    print("| in process (model loaded) | texts/s | vs pipeline | of FLOP floor |")
    print("| --- | ---: | ---: | ---: |")
    results = {}
    for name, values in times.items():
        rate = statistics.median(values)
        results[name] = rate
        print(f"| {name} | {rate:.0f} | {rate / baseline:.2f}x | {rate * flops / len(texts) / peak:.0%} |")
    print(
        f"\nlightbert fp32 vs pipeline: label agreement {agreement:.2%},"
        f" max probability difference {max_prob_difference:.1e}"
    )
    for name, (on_sst2, on_all, difference) in variant_agreement.items():
        print(
            f"{name} vs lightbert fp32: label agreement {on_sst2:.2%} on the SST-2 sentences,"
            f" {on_all:.2%} on all texts, max probability difference {difference:.1e}"
        )

    # Whole commands on a file, and start-up.
    text_file = tmp / "texts.txt"
    text_file.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    (tmp / "peer.py").write_text(PIPELINE_SCRIPT)
    model_arg = args.model or directory
    commands = {
        "pipeline script": [
            sys.executable,
            str(tmp / "peer.py"),
            directory,
            str(text_file),
            str(tmp / "peer.jsonl"),
            args.device,
        ],
        "lightbert predict --input": [
            sys.executable,
            "-m",
            "lightbert.cli",
            "predict",
            model_arg,
            "--input",
            str(text_file),
            "--output",
            str(tmp / "ours.jsonl"),
            "--overwrite",
            "true",
            "--device",
            args.device,
        ],
    }
    startup = {
        "import torch, transformers + load model": [
            sys.executable,
            "-c",
            "import torch, transformers;"
            f" transformers.AutoModelForSequenceClassification.from_pretrained({directory!r}).to({args.device!r});"
            f" transformers.AutoTokenizer.from_pretrained({directory!r})",
        ],
        "lightbert predict MODEL 'one text'": [
            sys.executable,
            "-m",
            "lightbert.cli",
            "predict",
            model_arg,
            "one text",
            "--device",
            args.device,
        ],
    }
    print("\n| whole command | wall s | texts/s | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: |")
    whole = {}
    for name, command in commands.items():
        runs = [run_child(command) for _ in range(max(1, args.repeats - 1))]
        wall, rss = statistics.median(r[0] for r in runs), max(r[1] for r in runs)
        whole[name] = {"wall_s": wall, "peak_rss_mib": rss}
        print(f"| {name} | {wall:.1f} | {len(texts) / wall:.0f} | {rss:.0f} |")
    ratio = whole["pipeline script"]["wall_s"] / whole["lightbert predict --input"]["wall_s"]
    print(f"\nwhole command: lightbert is {ratio:.2f}x faster than the pipeline script")
    print("\n| start-up | wall s |")
    print("| --- | ---: |")
    starts = {}
    for name, command in startup.items():
        starts[name] = statistics.median(run_child(command)[0] for _ in range(3))
        print(f"| {name} | {starts[name]:.2f} |")
    names = list(starts)
    print(f"\nstart-up ratio: {starts[names[1]] / starts[names[0]]:.2f}x the bare import + load (target <= 1.5x)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "in_process_texts_per_s": results,
                    "agreement": agreement,
                    "max_prob_difference": max_prob_difference,
                    "variant_agreement": variant_agreement,
                    "whole_command": whole,
                    "startup_s": starts,
                    "fp32_peak_gflops": peak / 1e9,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
