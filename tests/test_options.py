"""Every documented option works: a matrix generated from the commands' own `--help`.

For each command, every option its help lists (LightningCLI's `--trainer.*` options excepted, apart from the ones
the README shows) has a run here with a valid value, which succeeds, and a typical bad value, which ends with exit
code 2 and one `error:` line before any work starts. An option added without a case fails the coverage tests.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import ServerProcess, run_cli, sentiment_rows, train_checkpoint, write_csv, write_jsonl

from lightbert.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("fit", "validate", "test", "tune", "predict", "evaluate", "serve", "export", "inspect")
README_TRAINER_OPTIONS = set(re.findall(r"--trainer\.\w+", (ROOT / "README.md").read_text()))


def help_options(command: str) -> set[str]:
    """The options `lightbert COMMAND --help` lists (the first name of each)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([command, "--help"])
    options = set(re.findall(r"^\s+(?:-\w, )?(--[\w.]+)", out.getvalue(), flags=re.M))
    trainer = {o for o in options if o.startswith("--trainer.") and o not in README_TRAINER_OPTIONS}
    return options - trainer - {"--help", "--trainer"}


def options_in(args: list[str]) -> set[str]:
    return {arg.split("=")[0] for arg in args if arg.startswith("--")}


# -- the files the runs read ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_bert, trained_checkpoint, recipe_checkpoint):
    tmp = tmp_path_factory.mktemp("options")
    named = [(text, ["negative", "positive"][int(label)]) for text, label in sentiment_rows(16)]
    write_csv(tmp / "train.csv", ["text", "label"], named)
    write_csv(tmp / "val.csv", ["text", "label"], named[:8])
    write_csv(tmp / "test.csv", ["text", "label"], named[8:])
    topics = [("goal match", "sports;politics"), ("vote law", "politics"), ("atom lab", "science")] * 4
    write_csv(tmp / "multi.csv", ["text", "label"], topics)
    write_jsonl(tmp / "multi_lists.jsonl", [{"text": t, "label": labels.split(";")} for t, labels in topics])
    pairs = [(text, "the film", f"{int(label) * 2 + 0.5}") for text, label in sentiment_rows(16)]
    write_csv(tmp / "pairs.tsv", None, pairs)
    write_csv(tmp / "three.csv", ["text", "label"], [(t, str(i % 3)) for i, (t, _) in enumerate(sentiment_rows(12))])
    pair_dir = tmp / "pair-model"
    pair_ckpt = train_checkpoint(tiny_bert, pair_dir, tmp / "pairs.tsv", text_column=0, text_pair_column=1)
    (tmp / "model.yaml").write_text(yaml.safe_dump({"base": str(tiny_bert), "learning_rate": 0.001}))
    (tmp / "data.yaml").write_text(yaml.safe_dump({"train": str(tmp / "train.csv"), "batch_size": 4}))
    (tmp / "checkpoint.yaml").write_text(yaml.safe_dump({"save_top_k": 1}))
    (tmp / "early_stopping.yaml").write_text(yaml.safe_dump({"patience": 2, "monitor": "val_accuracy"}))
    (tmp / "trainer.yaml").write_text(yaml.safe_dump({"max_steps": 2, "enable_progress_bar": False}))
    (tmp / "config.yaml").write_text(
        yaml.safe_dump({"seed_everything": 5, "data": {"validation": str(tmp / "val.csv")}})
    )
    (tmp / "a-file").write_text("not a directory")
    tune_fit = {
        "model": {"base": str(tiny_bert)},
        "trainer": {"max_epochs": 1, "enable_model_summary": False},
        "data": {"train": str(tmp / "train.csv"), "validation": str(tmp / "val.csv"), "batch_size": 4},
    }
    (tmp / "tune-fit.yaml").write_text(yaml.safe_dump(tune_fit))
    (tmp / "space.yaml").write_text(yaml.safe_dump({"model.learning_rate": {"low": 1e-4, "high": 1e-3, "log": True}}))
    report = run_cli("evaluate", trained_checkpoint, f"--input={tmp / 'test.csv'}", f"--output_dir={tmp / 'report'}")
    assert report.code == 0, report.err
    return {
        "report": tmp / "report",
        "tmp": tmp,
        "base": tiny_bert,
        "ckpt": trained_checkpoint,
        "ckpt_copy": Path(shutil.copy(trained_checkpoint, tmp / "copied.ckpt")),
        "trained_train": trained_checkpoint.parents[3] / "train.csv",
        "trained_val": trained_checkpoint.parents[3] / "val.csv",
        "pair_ckpt": pair_ckpt,
        "recipe": recipe_checkpoint.path,
        **{p.stem.replace("-", "_"): p for p in tmp.iterdir() if p.is_file()},
    }


QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
DATA = ["--data.train={train}", "--data.validation={val}"]

VALID_RUNS: dict[str, list[list[str]]] = {
    "fit": [
        [
            "--model.base={base}",
            *DATA,
            "--data.test={test}",
            "--evaluation_dir={run}/evaluation",
            "--model.learning_rate=0.001",
            "--model.weight_decay=0.0",
            "--model.warmup_ratio=0.2",
            "--model.new_head=false",
            "--model.class_weights=balanced",
            "--early_stopping.patience=1",
            "--early_stopping.monitor=val_loss",
            "--early_stopping.min_delta=0.01",
            "--data.text_column=text",
            "--data.label_column=label",
            "--data.task=single_label",
            "--data.labels=[negative, positive]",
            "--data.header=true",
            "--data.max_length=32",
            "--data.long_texts=chunk",
            "--data.stride=8",
            "--data.batch_size=4",
            "--data.eval_batch_size=8",
            "--data.num_workers=0",
            "--data.seed=1",
            "--seed_everything=3",
            "--trainer.max_epochs=1",
            "--trainer.max_steps=3",
            "--trainer.default_root_dir={run}/runs",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.precision=32-true",
            "--trainer.gradient_clip_val=1.0",
            "--trainer.gradient_clip_algorithm=norm",
            "--trainer.strategy=auto",
            "--trainer.num_nodes=1",
            "--checkpoint.dirpath={run}/checkpoints",
            "--checkpoint.filename=best-{{step}}",
            "--checkpoint.monitor=val_accuracy",
            "--checkpoint.mode=max",
            "--checkpoint.save_top_k=2",
            "--checkpoint.save_last=true",
            "--checkpoint.last_every_n_steps=1",
            "--checkpoint.verbose=false",
            "--checkpoint.save_weights_only=false",
            "--checkpoint.auto_insert_metric_name=false",
            "--checkpoint.enable_version_counter=true",
            "--checkpoint.save_on_train_epoch_end=false",
            "--checkpoint.save_on_exception=false",
            "--checkpoint.every_n_epochs=1",
            "--trust_checkpoint=false",
            "--weights_only=true",
        ],
        [
            "--model.base={base}",
            "--data.train={multi}",
            "--data.validation={multi}",
            "--data.label_delimiter=;",
            "--data.task=multi_label",
            "--model.tune_thresholds=true",
            "--model.class_weights={{science: 2.0}}",
            "--checkpoint.every_n_train_steps=2",
            "--checkpoint.every_n_epochs=0",
            "--trainer.max_steps=2",
            "--trainer.default_root_dir={run}",
        ],
        [
            "--model.base={base}",
            "--data.train={pairs}",
            "--data.header=false",
            "--data.text_column=0",
            "--data.text_pair_column=1",
            "--data.label_column=2",
            "--data.task=regression",
            "--data.val_fraction=0.25",
            "--model.warmup_steps=1",
            "--checkpoint.monitor=val_pearson",
            "--checkpoint.mode=max",
            "--checkpoint.train_time_interval=0:00:10",
            "--checkpoint.every_n_epochs=0",
            "--trainer.max_steps=2",
            "--trainer.default_root_dir={run}",
        ],
        [  # the shared run's own options, from a copy of its checkpoint (which resumes into a new run directory)
            "--model.base={base}",
            "--data.train={trained_train}",
            "--data.validation={trained_val}",
            "--ckpt_path={ckpt_copy}",
            "--data.batch_size=8",
            "--model.learning_rate=0.001",
            "--trainer.max_epochs=3",
            "--trainer.default_root_dir={run}",
        ],
        [
            "--model.base={recipe}",
            "--model.recipe_base={base}",
            "--model.carry_optimizer=true",
            "--data.train={three}",
            "--data.validation={three}",
            "--trainer.max_steps=1",
            "--trainer.default_root_dir={run}",
        ],
        [
            "--config={config}",
            "--model={model}",
            "--data={data}",
            "--checkpoint={checkpoint}",
            "--early_stopping={early_stopping}",
            "--trainer={trainer}",
            "--trainer.default_root_dir={run}",
        ],
        ["--print_config"],
    ],
    "validate": [
        [
            "--ckpt_path={ckpt}",
            "--data.validation={val}",
            "--verbose=true",
            "--trust_checkpoint=false",
            "--weights_only=true",
            "--seed_everything=1",
            "--data.eval_batch_size=4",
            "--data.batch_size=4",
            "--data.max_length=32",
            "--data.long_texts=chunk",
            "--data.stride=4",
            "--data.header=true",
            "--data.text_column=text",
            "--data.label_column=label",
            "--data.num_workers=0",
            "--data.seed=1",
            "--data.task=single_label",
            "--data.labels=[negative, positive]",
            "--data.label_delimiter=,",
            "--data.val_fraction=0.5",
            "--data.test={test}",
            "--data.train={train}",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.precision=32-true",
            "--trainer.gradient_clip_val=1.0",
            "--trainer.gradient_clip_algorithm=norm",
            "--trainer.strategy=auto",
            "--trainer.num_nodes=1",
            "--trainer.max_epochs=1",
            "--trainer.max_steps=1",
            "--trainer.default_root_dir={run}",
            "--model.base={base}",
            "--model.learning_rate=0.001",
            "--model.weight_decay=0.0",
            "--model.warmup_ratio=0.2",
            "--model.warmup_steps=1",
            "--model.new_head=false",
            "--model.recipe_base={base}",
            "--model.carry_optimizer=false",
            "--model.class_weights=[1.0, 2.0]",
            "--model.tune_thresholds=false",
        ],
        [
            "--ckpt_path={pair_ckpt}",
            "--data.validation={pairs}",
            "--data.header=false",
            "--data.text_column=0",
            "--data.text_pair_column=1",
            "--data.label_column=2",
        ],
        [
            "--config={config}",
            "--ckpt_path={ckpt}",
            "--model={model}",
            "--data={data}",
            "--trainer={trainer}",
        ],
        ["--print_config"],
    ],
    "predict": [
        [
            "{ckpt}",
            "a good film",
            "--batch_size=2",
            "--devices=1",
            "--num_nodes=1",
            "--threshold=0.5",
            "--precision=fp32",
            "--device=cpu",
            "--trust_checkpoint=false",
            "--long_texts=chunk",
            "--stride=8",
            "--combine_windows=max",
        ],
        ["{ckpt}", "--input={test}", "--text_column=text", "--output={run}.jsonl", "--overwrite"],
        ["{pair_ckpt}", "--input={pairs}", "--text_column=0", "--text_pair_column=1"],
        ["{recipe}", "--base={base}", "a good film", "--precision=int8"],
    ],
    "evaluate": [
        [
            "{ckpt}",
            "--input={test}",
            "--text_column=text",
            "--label_column=label",
            "--header=true",
            "--output_dir={run}",
            "--overwrite",
            "--top_errors=3",
            "--threshold=0.5",
            "--long_texts=chunk",
            "--stride=16",
            "--combine_windows=mean",
            "--batch_size=4",
            "--precision=fp32",
            "--device=cpu",
            "--devices=1",
            "--num_nodes=1",
            "--trust_checkpoint=false",
        ],
        [
            "{pair_ckpt}",
            "--input={pairs}",
            "--header=false",
            "--text_column=0",
            "--text_pair_column=1",
            "--label_column=2",
            "--output_dir={run}",
        ],
        ["{recipe}", "--base={base}", "--input={three}", "--output_dir={run}", "--label_delimiter=;"],
    ],
    "serve": [  # a real server, which answers one request and stops (test_valid_values_run)
        [
            "{recipe}",
            "--base={base}",
            "--host=127.0.0.1",
            "--max_batch_size=4",
            "--batch_timeout=0.005",
            "--workers=1",
            "--precision=int8",
            "--device=cpu",
            "--batch_size=8",
            "--threshold=0.5",
            "--max_texts=10",
            "--max_body_bytes=4096",
            "--long_texts=chunk",
            "--stride=8",
            "--combine_windows=mean",
            "--timeout=5",
            "--trust_checkpoint=false",
        ],
    ],
    "tune": [  # every option checked and the study opened, but no trial started (tests/test_tune.py runs trials)
        [
            "--config={tune_fit}",
            "--search={space}",
            "--n_trials=1",
            "--timeout=0.001",
            "--study_name=options",
            "--storage=sqlite:///{run}.db",
            "--metric=val_accuracy",
            "--direction=max",
            "--seed=1",
            "--root={run}",
            "--pruner_startup_trials=1",
        ]
    ],
    "export": [
        ["{ckpt}", "{run}", "--overwrite", "--trust_checkpoint=false", "--report={report}"],
        ["{recipe}", "{run}", "--base={base}"],
    ],
    "inspect": [["{ckpt}", "--json", "--trust_checkpoint=false"]],
}
VALID_RUNS["test"] = [
    [arg.replace("--verbose=true", "--verbose=false") for arg in run] for run in VALID_RUNS["validate"]
]
VALID_RUNS["test"][1] = [a.replace("--data.validation", "--data.test") for a in VALID_RUNS["test"][1]]
VALID_RUNS["test"][2] = [*VALID_RUNS["test"][2], "--data.test={test}"]
VALID_RUNS["test"][0] = [*VALID_RUNS["test"][0], "--evaluation_dir={run}/evaluation"]

# Options that take any value of their type, so no value is bad (and why).
ANY_VALUE = {
    "--checkpoint.filename": "any name; placeholders Lightning does not know stay as written",
    "--print_config": "prints and exits",
    "--data.seed": "any integer seeds the split",
    "--seed_everything": "bad values are type errors, covered by --data.seed's kin below",
}

BAD_VALUES: dict[str, list[str]] = {
    "--model.base": ["/no/such/dir", "{a_file}"],
    "--model.learning_rate": ["fast", "-1"],
    "--model.weight_decay": ["-0.1"],
    "--model.warmup_ratio": ["1.5"],
    "--model.warmup_steps": ["-3", "some"],
    "--model.new_head": ["maybe"],
    "--model.recipe_base": ["/no/such/dir"],
    "--model.carry_optimizer": ["maybe", "true"],
    "--model.class_weights": ["heavy", "[1.0]", "[-1.0, 1.0]", "{{unknown: 2.0}}"],
    "--model.tune_thresholds": ["maybe", "true"],
    "--early_stopping.patience": ["-1"],
    "--early_stopping.monitor": ["val_acc"],
    "--early_stopping.min_delta": ["-0.5"],
    "--data.train": ["/no/such.csv", "{a_file}"],
    "--data.validation": ["/no/such.csv"],
    "--data.test": ["/no/such.csv"],
    "--data.text_column": ["review", "9"],
    "--data.text_pair_column": ["second"],
    "--data.label_column": ["stars"],
    "--data.task": ["classification"],
    "--data.labels": ["[a, b]", "[x, x]"],
    "--data.label_delimiter": [""],
    "--data.header": ["maybe"],
    "--data.max_length": ["0", "many"],
    "--data.batch_size": ["0"],
    "--data.eval_batch_size": ["0"],
    "--data.val_fraction": ["1.5"],
    "--data.num_workers": ["-1"],
    "--data.long_texts": ["wrap"],
    "--data.stride": ["-1", "500"],
    "--long_texts": ["wrap"],
    "--stride": ["-1", "5000"],
    "--combine_windows": ["median"],
    "--trainer.max_epochs": ["-5", "many"],
    "--trainer.max_steps": ["-5"],
    "--trainer.default_root_dir": ["{a_file}/runs"],
    "--trainer.accelerator": ["tpu"],
    "--trainer.devices": ["0"],
    "--trainer.precision": ["fp8"],
    "--trainer.gradient_clip_val": ["-1", "many"],
    "--trainer.gradient_clip_algorithm": ["sideways"],
    "--trainer.strategy": ["nonsense"],
    "--trainer.num_nodes": ["0", "two"],
    "--devices": ["0", "two"],
    "--num_nodes": ["0", "2"],
    "--trainer.enable_progress_bar": ["maybe"],
    "--trainer.enable_model_summary": ["maybe"],
    "--checkpoint.dirpath": ["{a_file}/checkpoints"],
    "--checkpoint.monitor": ["val_acc"],
    "--checkpoint.mode": ["middle"],
    "--checkpoint.save_top_k": ["-2"],
    "--checkpoint.save_last": ["maybe"],
    "--checkpoint.last_every_n_steps": ["0"],
    "--checkpoint.verbose": ["maybe"],
    "--checkpoint.save_weights_only": ["maybe"],
    "--checkpoint.auto_insert_metric_name": ["maybe"],
    "--checkpoint.enable_version_counter": ["maybe"],
    "--checkpoint.save_on_train_epoch_end": ["maybe"],
    "--checkpoint.save_on_exception": ["maybe"],
    "--checkpoint.every_n_epochs": ["-1"],
    "--checkpoint.every_n_train_steps": ["-1"],
    "--checkpoint.train_time_interval": ["soon"],
    "--ckpt_path": ["/no/such.ckpt", "{recipe}"],
    "--trust_checkpoint": ["maybe"],
    "--weights_only": ["false"],
    "--verbose": ["maybe"],
    "--config": ["/no/such.yaml", "{a_file}"],
    "--model": ["/no/such.yaml"],
    "--data": ["/no/such.yaml"],
    "--checkpoint": ["/no/such.yaml"],
    "--early_stopping": ["/no/such.yaml"],
    "--trainer": ["/no/such.yaml"],
    # predict, export, inspect
    "--input": ["/no/such.txt"],
    "--output": ["/no/such/dir/out.jsonl"],
    "--text_column": ["review"],
    "--text_pair_column": ["second"],
    "--base": ["/no/such/dir"],
    "--batch_size": ["0"],
    "--threshold": ["1.5"],
    "--precision": ["int4"],
    "--device": ["gpu", "cuda:99"],
    "--overwrite": ["maybe"],
    "--json": ["maybe"],
    # evaluate, and the report of fit and test
    "--label_column": ["stars"],
    "--label_delimiter": [""],
    "--header": ["maybe"],
    "--output_dir": ["{a_file}"],
    "--top_errors": ["-1"],
    "--evaluation_dir": ["{a_file}"],
    "--report": ["/no/such/report.json"],
    # tune
    "--search": ["/no/such.yaml", "{a_file}"],
    "--n_trials": ["0"],
    "--study_name": ["a b"],
    "--storage": ["nosuch://x"],
    "--metric": ["val_acc"],
    "--direction": ["up"],
    "--seed": ["x"],
    "--root": ["{a_file}"],
    "--pruner_startup_trials": ["-1"],
    # serve
    "--host": ["example.com"],
    "--port": ["80", "http"],
    "--max_batch_size": ["0"],
    "--batch_timeout": ["-1"],
    "--workers": ["0"],
    "--max_texts": ["0"],
    "--max_body_bytes": ["10"],
    "--timeout": ["0"],
}

VALID_BASE = {  # the rest of a run that a bad value is added to
    "fit": ["--model.base={base}", *DATA, "--trainer.max_steps=1", "--trainer.default_root_dir={run}"],
    "validate": ["--ckpt_path={ckpt}", "--data.validation={val}", "--trainer.default_root_dir={run}"],
    "test": ["--ckpt_path={ckpt}", "--data.test={test}", "--trainer.default_root_dir={run}"],
    "predict": ["{ckpt}", "a good film"],
    "evaluate": ["{ckpt}", "--input={test}", "--output_dir={run}"],
    "serve": ["{ckpt}"],
    "tune": ["--config={tune_fit}", "--search={space}", "--n_trials=1", "--root={run}"],
    "export": ["{ckpt}", "{run}"],
    "inspect": ["{ckpt}"],
}
# The one case whose bad value needs another valid rest: a pair column for a model trained on pairs.
SPECIAL_BASE = {
    ("predict", "--text_pair_column"): ["{pair_ckpt}", "--input={pairs}", "--text_column=0"],
    ("evaluate", "--text_pair_column"): ["{pair_ckpt}", "--input={pairs}", "--text_column=0", "--output_dir={run}"],
}


def fill(args: list[str], files: dict, run: Path) -> list[str]:
    return [arg.format(**files, run=run) for arg in args]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_in_help_has_a_run_with_a_valid_value(command):
    covered = set().union(*(options_in(run) for run in VALID_RUNS[command]))
    if command == "serve":
        covered.add("--port")  # ServerProcess passes a free one
    missing = help_options(command) - covered
    assert not missing, f"options of lightbert {command} without a valid case: {sorted(missing)}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_in_help_has_a_bad_value_case(command):
    missing = help_options(command) - set(BAD_VALUES) - set(ANY_VALUE)
    assert not missing, f"options of lightbert {command} without a bad-value case: {sorted(missing)}"


@pytest.mark.parametrize(("command", "index"), [(c, i) for c in COMMANDS for i in range(len(VALID_RUNS[c]))])
def test_valid_values_run(command, index, files, tmp_path):
    args = fill(VALID_RUNS[command][index], files, tmp_path / "run")
    if command in ("fit", "validate", "test") and "--print_config" not in args:
        args += QUIET
    if "--print_config" in args:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as done:
            main([command, *args])
        assert done.value.code in (0, None)
        return
    if command == "serve":
        with ServerProcess(*args) as server:
            assert server.post({"text": "a good film"}).status == 200
            assert server.stop() == 0, server.err
        return
    result = run_cli(command, *args)
    assert result.code == 0, result.err[-2000:]


def bad_cases():
    for command in COMMANDS:
        for option in sorted(help_options(command) - set(ANY_VALUE)):
            for value in BAD_VALUES.get(option, []):
                yield command, option, value


@pytest.mark.parametrize(("command", "option", "value"), list(bad_cases()))
def test_a_bad_value_ends_with_one_error_line_before_any_work(command, option, value, files, tmp_path, monkeypatch):
    from lightbert.serve import Server

    def started(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(Server, "run", started)  # a bad value that got through would serve forever
    run = tmp_path / "run"
    rest = SPECIAL_BASE.get((command, option), VALID_BASE[command])
    args = [*fill(rest, files, run), f"{option}={value.format(**files)}"]
    result = run_cli(command, *args)
    assert result.code == 2, f"exit {result.code}: {result.err[-2000:]}"
    assert len(result.err_lines) == 1 and result.err_lines[0].startswith("error: "), result.err[-2000:]
    assert "internal error" not in result.err
    assert not run.exists(), "work started before the error"


def test_boolean_options_read_as_flags_as_well_as_with_true_or_false(files, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    assert run_cli("predict", files["ckpt"], "good", "--output", out, "--overwrite").code == 0
    assert out.read_text() != "old\n"
    assert run_cli("predict", files["ckpt"], "good", "--output", out, "--overwrite", "false").code == 2
    result = run_cli("predict", files["ckpt"], "good", "--trust_checkpoint")
    assert result.code == 0 and "warning: loading" in result.err
    assert run_cli("inspect", files["ckpt"], "--json").out.lstrip().startswith("{")
    assert run_cli("export", files["ckpt"], tmp_path / "model", "--overwrite").code == 0
    fit = ["--model.base", files["base"], "--data.train", files["train"], "--trainer.max_steps", "1"]
    result = run_cli("fit", *fit, "--trainer.default_root_dir", tmp_path / "runs", "--trust_checkpoint", *QUIET)
    assert result.code == 0, result.err
