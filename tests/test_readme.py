"""Every command the README shows runs: the commands are read from README.md (so they cannot drift) and run in
order in a scratch directory holding small files under the README's own names, the tiny model standing in for the
bundled one and a few steps for the epochs. The benchmark commands measure for minutes, so their options are
checked against each script's own parser instead. Two commands run elsewhere, read from the README there: the
two-process fit (tests/test_distributed.py, compared with one process) and serve (the shared server of
tests/conftest.py, asked the README's curl request in tests/test_serve.py)."""

from __future__ import annotations

import contextlib
import importlib
import io
import shlex
from pathlib import Path

import pytest
from helpers import (
    commands,
    copy_directory,
    run_cli,
    run_process,
    sentiment_rows,
    train_recipe,
    write_csv,
    write_jsonl,
)

from lightbert.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--trainer.max_steps=2", "--trainer.limit_val_batches=2"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_the_readme_shows_commands_to_run():
    shown = commands(ROOT / "README.md")
    assert sum(c.startswith("lightbert ") for c in shown) >= 15
    assert any(c.startswith("python benchmarks/") for c in shown)


@pytest.fixture
def scratch(tmp_path, tiny_bert, monkeypatch):
    """A working directory with the README's files: tiny stand-ins under the names the commands use."""
    monkeypatch.chdir(tmp_path)
    named = [(text, ["negative", "positive"][int(label)]) for text, label in sentiment_rows(24)]
    for name, rows in (("reviews", named), ("reviews-val", named[:8]), ("reviews-test", named[8:16])):
        write_csv(tmp_path / f"{name}.csv", ["text", "label"], rows)
    write_csv(tmp_path / "more-reviews.csv", ["text", "label"], named[8:])
    write_csv(tmp_path / "new.csv", ["text"], [(text,) for text, _ in named[:5]])
    write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(16))
    write_csv(tmp_path / "train.tsv", ["sentence", "label"], sentiment_rows(16))
    write_csv(tmp_path / "val.tsv", ["sentence", "label"], sentiment_rows(8, seed=3))
    readme = (ROOT / "README.md").read_text()
    space = readme.split("```yaml\n# space.yaml", 1)[1].split("```", 1)[0]  # the search space the README shows
    space = "# space.yaml" + space
    (tmp_path / "space.yaml").write_text(space, encoding="utf-8")
    (tmp_path / "texts.txt").write_text("a good film\nbad\n", encoding="utf-8")
    topics = [(text, ["World", "Sports"][int(label)]) for text, label in sentiment_rows(20)]
    write_csv(tmp_path / "agnews.tsv", None, topics)
    pairs = [
        ("0", "g", "f", "2012", "0", "s", "s", text, "the film", f"{int(y) * 4 + 0.5:.3f}")
        for text, y in sentiment_rows(20)
    ]
    write_csv(tmp_path / "stsb.tsv", None, pairs)
    write_jsonl(
        tmp_path / "tags.jsonl",
        [{"text": t, "label": ["a", "b"] if y == "1" else ["b"]} for t, y in sentiment_rows(16)],
    )
    (tmp_path / "path" / "to").mkdir(parents=True)
    copy_directory(tiny_bert, tmp_path / "path" / "to" / "hf-model-dir")
    copy_directory(tiny_bert, tmp_path / "path" / "to" / "bert-dir")
    recipe = train_recipe(tiny_bert, tmp_path / "recipe-run", num_labels=2)
    recipe.path.rename(tmp_path / "recipe.ckpt")
    return tmp_path


def with_stand_ins(command: str, tiny_bert: Path) -> tuple[list[str], str | None]:
    """The arguments to run for a README command (and the file its stdout goes to): the options of the quick
    start's fit for ``<the same options>``, and for fit the tiny model and a few steps."""
    same_options = "--data.train reviews.csv --data.validation reviews-val.csv"
    command = command.replace("<the same options>", same_options)
    redirect = None
    if " > " in command:
        command, redirect = (part.strip() for part in command.split(" > "))
    args = shlex.split(command)[1:]
    if args[0] == "tune":  # one trial, not the README's ten
        args[args.index("--n_trials") + 1] = "1"
    if args[0] == "fit":
        if not any(a.startswith("--model.base") for a in args):
            args.append(f"--model.base={tiny_bert}")
        args += FAST + QUIET
    return args, redirect


def several_processes(args: list[str]) -> bool:
    """Whether a command asks for more processes (then it runs as a real one, whose launcher starts the others)."""
    return any(
        a in ("--trainer.devices", "--devices") and i + 1 < len(args) and int(args[i + 1]) > 1
        for i, a in enumerate(args)
    )


def test_every_lightbert_command_in_the_readme_runs(scratch, tiny_bert):
    ran = []
    for command in commands(ROOT / "README.md"):
        if not command.startswith("lightbert "):
            continue
        args, redirect = with_stand_ins(command, tiny_bert)
        if args[0] == "fit" and several_processes(args):
            continue  # run on two processes, and compared with one, by tests/test_distributed.py (two_processes)
        if args[0] == "serve":
            continue  # the shared server of tests/conftest.py (server) is this command; test_serve.py asks it
        if redirect:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
                main(args)
            assert done.value.code in (0, None), command
            (scratch / redirect).write_text(out.getvalue())
        else:
            # Several processes: a real one, whose launcher starts the others with the same command.
            result = run_process(*args) if several_processes(args) else run_cli(*args)
            assert result.code == 0, f"{command}\n{result.err[-2000:]}"
        ran.append(args[0])
    assert {"fit", "tune", "predict", "evaluate", "test", "export", "inspect"} <= set(ran)
    assert (scratch / "my-model" / "model.safetensors").is_file()
    assert len((scratch / "predictions.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize(
    "command",
    [c for c in commands(ROOT / "README.md") if c.startswith("python benchmarks/")]
    + [c for c in commands(ROOT / "benchmarks" / "README.md") if c.startswith("python benchmarks/")],
)
def test_benchmark_commands_in_the_readmes_use_options_their_scripts_have(command, monkeypatch):
    script, *args = shlex.split(command)[1:]
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module(Path(script).stem)
    module.build_parser().parse_args(args)  # exits (and fails the test) on an unknown option
