"""Helpers shared by the tests: tiny models and tokenizers, toy data, training shortcuts, and running the CLI
in-process (fast) or as a real process (where the process itself is what is tested)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

POSITIVE = ["good", "great", "fine", "lovely", "superb", "happy", "bright", "warm"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dull", "grim", "cold", "weak"]
NEUTRAL = ["the", "a", "film", "movie", "was", "is", "very", "plot", "actor", "story", "and", "but", "quite", "rather"]
TOPICS = {
    "sports": ["goal", "match", "team"],
    "politics": ["vote", "law", "senate"],
    "science": ["atom", "cell", "lab"],
}
VOCAB_WORDS = sorted(set(POSITIVE + NEGATIVE + NEUTRAL + [w for ws in TOPICS.values() for w in ws]))


# -- tiny models ------------------------------------------------------------------------------------------------------


def make_tokenizer(directory: Path) -> Any:
    """A small WordPiece tokenizer (BERT-style) written to ``directory``."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    vocabulary = list(dict.fromkeys(specials + VOCAB_WORDS + letters + list(".,!?")))  # once each: ids are lines
    (directory / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def make_base_model(directory: Path, arch: str = "bert", dtype: str | None = None) -> Path:
    """A tiny random model without a classification head (like a pretrained encoder), plus its tokenizer."""
    import torch
    from transformers import AutoModel, BertConfig, DistilBertConfig, RobertaConfig

    tokenizer = make_tokenizer(directory)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    if arch == "bert":
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    elif arch == "distilbert":
        config = DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64
        )
    elif arch == "roberta":
        config = RobertaConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=66,
            pad_token_id=0,
            type_vocab_size=1,
        )
    else:
        raise ValueError(arch)
    model = AutoModel.from_config(config)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(str(directory))
    return directory


# -- toy data ---------------------------------------------------------------------------------------------------------


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Learnable toy sentiment: a positive or negative word among neutral ones; varied lengths; labels "0"/"1"."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [*rng.choices(NEUTRAL, k=rng.randint(2, 12)), rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), str(label)))
    return rows


def write_csv(path: Path, header: list[str] | None, rows: list[tuple]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def shared_sample(source: Path, target: Path, rows: int, skip: int = 0) -> Path:
    """The first ``rows`` data rows of a shared TSV (after ``skip``), with its header if it has one."""
    with open(source, encoding="utf-8") as f:
        lines = f.readlines()
    header = lines[:1] if lines[0].startswith("sentence\t") else []
    body = lines[len(header) + skip : len(header) + skip + rows]
    target.write_text("".join(header + body), encoding="utf-8")
    return target


# -- training shortcuts -----------------------------------------------------------------------------------------------


def quiet_trainer(**kwargs: Any) -> Any:
    """A Trainer for tests: CPU, no logger files, no progress bar, deterministic."""
    import lightning.pytorch as pl

    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def train_checkpoint(base: Path, directory: Path, rows: Path, **data_kwargs: Any) -> Path:
    """One epoch of the Python API on ``rows`` (training and validation); returns last.ckpt."""
    import lightning.pytorch as pl

    from lightbert import ClassificationDataModule, SequenceClassifier
    from lightbert.callbacks import Checkpointing

    pl.seed_everything(0, verbose=False)
    data = ClassificationDataModule(
        train=str(rows), validation=str(rows), tokenizer=str(base), batch_size=8, **data_kwargs
    )
    checkpoint = Checkpointing(dirpath=str(directory), save_last=True)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(SequenceClassifier(base=str(base), learning_rate=1e-3), data)
    return directory / "last.ckpt"


def recipe_module_class() -> Any:
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from transformers import AutoModelForSequenceClassification

    class RecipeModule(pl.LightningModule):
        """How users write it: an HF classifier under some attribute, AdamW, Trainer + ModelCheckpoint."""

        def __init__(
            self,
            model_dir: str,
            attribute: str = "model",
            num_labels: int = 3,
            hparams: bool = True,
            extra: bool = False,
            optimizer: str = "adamw",
        ):
            super().__init__()
            if hparams:
                self.save_hyperparameters()
            self.optimizer_name = optimizer
            self.attribute = attribute
            classifier = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
            setattr(self, attribute, classifier)
            if extra:
                self.projection = nn.Linear(4, 4)

        @property
        def classifier(self):
            return getattr(self, self.attribute)

        def training_step(self, batch, batch_idx):
            return self.classifier(**batch).loss

        def configure_optimizers(self):
            if self.optimizer_name == "sgd":
                return torch.optim.SGD(self.parameters(), lr=1e-3, momentum=0.9)
            if self.optimizer_name == "adamw-two-groups":  # no decay on biases and LayerNorm weights, a common variant
                named = list(self.named_parameters())
                plain = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
                decayed = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
                groups = [{"params": decayed, "weight_decay": 0.01}, {"params": plain, "weight_decay": 0.0}]
                return torch.optim.AdamW(groups, lr=1e-3)
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    return RecipeModule


@dataclass
class Recipe:
    path: Path
    module: Any
    tokenizer: Any


def train_recipe(base: Path, directory: Path, **kwargs: Any) -> Recipe:
    """Three steps of the common recipe; returns the checkpoint ModelCheckpoint wrote, the module and tokenizer."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    pl.seed_everything(0, verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    rows = sentiment_rows(12)
    encoded = tokenizer([t for t, _ in rows], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    labels = torch.tensor([int(label) for _, label in rows])
    data = [
        {"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": labels[i]}
        for i in range(12)
    ]
    module = recipe_module_class()(str(base), **kwargs)
    checkpoint = ModelCheckpoint(dirpath=str(directory), filename="recipe")
    trainer = quiet_trainer(max_steps=3, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, DataLoader(data, batch_size=4))
    return Recipe(directory / "recipe.ckpt", module, tokenizer)


def reference_logits(model: Any, tokenizer: Any, texts: list[str]) -> Any:
    """Logits computed one text at a time by plain transformers, in eval mode: what a model should predict."""
    import torch

    model.eval()
    with torch.inference_mode():
        return torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])


def copy_directory(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


# -- the command line -------------------------------------------------------------------------------------------------


def commands(markdown: Path, prefixes: tuple[str, ...] = ("lightbert ", "python benchmarks/")) -> list[str]:
    """The commands a markdown file shows: indented lines that start with one of ``prefixes`` (continuation lines
    joined, comments dropped), and inline ``python benchmarks/...`` code."""
    import re

    found, lines = [], markdown.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("    ") and line.strip().startswith(prefixes):
            command = line.strip()
            while command.endswith("\\"):
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            found.append(command.split("  #")[0].strip())
        i += 1
    benchmarks = (
        re.findall(r"`(python benchmarks/[^`]+)`", markdown.read_text()) if "python benchmarks/" in prefixes else []
    )
    return found + benchmarks


def fit_args(base: Path, train: Path, val: Path, root: Path, *extra: str, epochs: int = 1, batch: int = 8) -> list[str]:
    """``lightbert fit`` on a tiny model: quiet, ``epochs`` epochs of batch ``batch``, runs under ``root``."""
    return [
        "fit",
        f"--model.base={base}",
        f"--data.train={train}",
        f"--data.validation={val}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.max_epochs={epochs}",
        f"--data.batch_size={batch}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(*args: Any) -> Result:
    """``lightbert ARGS`` in this process (its stdout and stderr captured): fast, for everything but the process
    itself (exit on signals, start-up imports)."""
    from lightbert.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def run_process(*args: Any, env: dict[str, str] | None = None, timeout: float = 600) -> Result:
    """``lightbert ARGS`` as a real process (``python -m lightbert.cli``)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "lightbert.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )
    return Result(result.returncode, result.stdout, result.stderr)


def assert_one_error_line(result: Result, *fragments: str) -> None:
    """Exit code 2 and exactly one line on stderr, ``error: <what> (<what to do>)``, containing ``fragments``."""
    assert result.code == 2, result.err[-2000:]
    assert len(result.err_lines) == 1, result.err[-2000:]
    line = result.err_lines[0]
    assert line.startswith("error: ") and line.rstrip().endswith(")"), line
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in line, line


# -- servers ----------------------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Answer:
    status: int
    body: Any


def http(url: str, payload: Any = None, raw: bytes | None = None, timeout: float = 60) -> Answer:
    """GET ``url``, or POST ``payload`` as JSON (or ``raw`` bytes); the status and the decoded JSON (or text)."""
    import urllib.error
    import urllib.request

    data = raw if raw is not None else None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, content = answer.status, answer.read()
    except urllib.error.HTTPError as err:
        status, content = err.code, err.read()
    try:
        return Answer(status, json.loads(content))
    except ValueError:
        return Answer(status, content.decode())


def serving_api(
    model: Path,
    paired: bool = False,
    long_texts: Any = None,
    threads: int | None = None,
    lone_threads: int | None = None,
) -> Any:
    """``lightbert serve``'s ``ClassifierAPI`` set up in this process (as in an inference worker): its
    decode_request/predict/encode_response without starting a server. ``threads``/``lone_threads``: a worker's
    share of the cores and all of them (default: this session's threads, which setup and predict set)."""
    import signal

    import torch

    from lightbert.serve import ClassifierAPI, ServeSettings

    session = torch.get_num_threads()
    share, every = threads or session, lone_threads or session
    settings = ServeSettings(str(model), None, False, "cpu", "fp32", 64, None, 8, share, every, long_texts)
    api = ClassifierAPI(settings, paired=paired, max_batch_size=8, batch_timeout=0.0)
    previous = signal.getsignal(signal.SIGINT)
    try:
        api.setup("cpu")
    finally:
        signal.signal(signal.SIGINT, previous)  # setup ignores Ctrl+C, as a worker process must
    return api


class ServerProcess:
    """``lightbert serve MODEL ARGS`` as a real process on a free port of 127.0.0.1, in its own process group
    (as a terminal's job); ``url`` once it says it is ready. Killed on exit if a test left it running."""

    def __init__(self, model: Path, *args: Any, ready_timeout: float = 180) -> None:
        import threading
        import time

        self.port = free_port()
        environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
        # The free port last: it overrides a --port in ``args`` (as in the README's command).
        command = [sys.executable, "-m", "lightbert.cli", "serve", str(model), *map(str, args), f"--port={self.port}"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.out: list[str] = []
        self.err_lines: list[str] = []
        ready = threading.Event()

        def read(stream: Any, lines: list[str]) -> None:
            for line in stream:
                lines.append(line)
                if line.startswith("serving "):
                    ready.set()

        self.readers = [
            threading.Thread(target=read, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=read, args=(self.process.stderr, self.err_lines), daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        deadline = time.monotonic() + ready_timeout
        while not ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the server did not start: {self.err[-3000:]}")

    @property
    def err(self) -> str:
        return "".join(self.err_lines)

    def post(self, payload: Any = None, raw: bytes | None = None) -> Answer:
        return http(f"{self.url}/predict", payload, raw)

    def get(self, path: str) -> Answer:
        return http(f"{self.url}{path}")

    def stop(self, signum: int | None = None, group: bool = False, timeout: float = 60) -> int:
        """Send ``signum`` (SIGTERM by default) to the server, or to its whole process group as Ctrl+C does; its
        exit code."""
        import signal

        signum = signal.SIGTERM if signum is None else signum
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return code

    def kill(self) -> None:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for reader in self.readers:
            reader.join(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process.poll() is None:
            self.kill()


@contextlib.contextmanager
def file_size_limit(size: int):
    """A limit on the size of any file this process writes (RLIMIT_FSIZE, which needs no privileges): a write
    beyond it fails with EFBIG, as a quota or a full disk fail it (SIGXFSZ ignored, which would kill the process)."""
    import resource
    import signal

    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, previous_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
