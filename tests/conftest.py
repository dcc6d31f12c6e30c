"""Shared fixtures: tiny random BERT/DistilBERT/RoBERTa model directories, one tiny trained lightbert checkpoint and
one recipe checkpoint for the whole session, small data files, and the real data in ../shared/data. Nothing is
downloaded; everything is built in the test session."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from helpers import (
    SHARED_DATA,
    ServerProcess,
    commands,
    make_base_model,
    run_cli,
    sentiment_rows,
    train_checkpoint,
    train_recipe,
    write_csv,
)

README = Path(__file__).resolve().parents[1] / "README.md"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The README's test command runs two pytest-xdist workers, a test file at a time (``--dist loadgroup``, each file its
# own group): module fixtures are built once. The files that share the session's server run on one worker, and the
# files that start processes (minutes of imports) are handed out first, so that both workers finish together.
SAME_WORKER = {"test_serve_page": "test_serve"}
SLOWEST_FIRST = ("test_distributed", "test_tune", "test_serve", "test_readme", "test_crash", "test_options")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def group(item: pytest.Item) -> str:
        return SAME_WORKER.get(item.path.stem, item.path.stem)

    def rank(item: pytest.Item) -> int:
        name = group(item)
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))


if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # the workers share the cores; the processes that tests start set their own threads


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("tiny-distilbert"), "distilbert")


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture
def sentiment_files(tmp_path) -> tuple[Path, Path]:
    """A training and a validation CSV of toy sentiment (header text,label; labels 0 and 1)."""
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(40, seed=1))
    val = write_csv(tmp_path / "val.csv", ["text", "label"], sentiment_rows(8, seed=2))
    return train, val


@pytest.fixture(scope="session")
def pair_model(tmp_path_factory, tiny_bert) -> Path:
    """A pair model trained on a headerless TSV by position: id, text 1, second text 2, label 3 (read it, never
    change it)."""
    tmp = tmp_path_factory.mktemp("pairs")
    rows = [(str(i), t, "the film", ["negative", "positive"][int(y)]) for i, (t, y) in enumerate(sentiment_rows(16))]
    path = write_csv(tmp / "pairs.tsv", None, rows)
    return train_checkpoint(tiny_bert, tmp / "run", path, text_column=1, text_pair_column=2, label_column=3)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_bert) -> Path:
    """The run directory of one `lightbert fit` on tiny BERT, shared by the whole session (read it, never change
    it): labels negative/positive, 24 training rows, batch 8, 2 epochs (6 steps), last.ckpt refreshed every 3 steps.
    """
    tmp = tmp_path_factory.mktemp("trained")
    named = [(text, ["negative", "positive"][int(label)]) for text, label in sentiment_rows(24)]
    train = write_csv(tmp / "train.csv", ["text", "label"], named)
    val = write_csv(tmp / "val.csv", ["text", "label"], named[:8])
    result = run_cli(
        "fit",
        f"--model.base={tiny_bert}",
        f"--data.train={train}",
        f"--data.validation={val}",
        f"--trainer.default_root_dir={tmp / 'runs'}",
        "--trainer.max_epochs=2",
        "--data.batch_size=8",
        "--model.learning_rate=0.001",
        "--checkpoint.last_every_n_steps=3",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    )
    assert result.code == 0, result.err
    return tmp / "runs" / "version_0"


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run) -> Path:
    """last.ckpt of the shared run (epoch 1, step 6)."""
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def server(trained_checkpoint):
    """The README's ``lightbert serve`` command (tests/test_readme.py leaves it to this fixture) on the shared
    checkpoint, a free port and a few limits to test, shared by the HTTP tests and the page tests: starting a server
    takes seconds."""
    [command] = commands(README, ("lightbert serve ",))
    _, _, _, *options = shlex.split(command)  # lightbert serve MODEL OPTIONS (its --port is replaced by a free one)
    limits = ("--max_texts=8", "--max_body_bytes=4096", "--batch_timeout=0.02")
    with ServerProcess(trained_checkpoint, *options, *limits) as s:
        yield s


@pytest.fixture(scope="session")
def classifier(trained_checkpoint):
    """The shared checkpoint, loaded once (fp32, CPU). Tests that change its precision load their own."""
    from lightbert import load

    return load(trained_checkpoint)


@pytest.fixture(scope="session")
def exported_dir(trained_checkpoint, tmp_path_factory) -> Path:
    """The shared checkpoint exported as a Hugging Face directory (read it, never change it)."""
    from lightbert.export import export

    out = tmp_path_factory.mktemp("exported") / "model"
    export(trained_checkpoint, out)
    return out


@pytest.fixture(scope="session")
def recipe_checkpoint(tmp_path_factory, tiny_bert):
    """A recipe checkpoint (HF model under `self.model`, 3 labels, save_hyperparameters naming the base), with the
    module that wrote it and its tokenizer."""
    return train_recipe(tiny_bert, tmp_path_factory.mktemp("recipe"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "sst2" / "train.tsv").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
