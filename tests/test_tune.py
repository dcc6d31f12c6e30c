"""`lightbert tune`: a search over fit's options on Optuna, each trial a fit process of its own; pruning, resuming
after a kill, the result files, and refusals of bad search spaces before any trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from helpers import assert_one_error_line, read_jsonl, run_cli, sentiment_rows, write_csv
from optuna.trial import TrialState

from lightbert.errors import LightbertError
from lightbert.tuning import TrialLauncher, read_search_space


@pytest.fixture
def fit_config(tiny_bert, tmp_path):
    """A fit config on tiny BERT: 40 training rows, batch 8, one epoch (one validation per trial)."""
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(40, seed=1))
    val = write_csv(tmp_path / "val.csv", ["text", "label"], sentiment_rows(16, seed=2))
    config = {
        "model": {"base": str(tiny_bert)},
        "data": {"train": str(train), "validation": str(val), "batch_size": 8},
        "trainer": {"max_epochs": 1, "enable_model_summary": False},
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_space(path, space: dict):
    path.write_text(yaml.safe_dump(space))
    return path


def tune_args(fit_config, space, tmp_path, *extra):
    return ["tune", f"--config={fit_config}", f"--search={space}", f"--root={tmp_path / 'runs'}", *extra]


def study_of(tmp_path, name):
    storage = f"sqlite:///{tmp_path / 'runs' / f'tune-{name}' / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage)


def test_a_search_finds_a_learning_rate_in_its_range_and_writes_what_it_found(fit_config, tmp_path):
    space = write_space(tmp_path / "lr.yaml", {"model.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}})
    result = run_cli(*tune_args(fit_config, space, tmp_path, "--n_trials=2"))
    assert result.code == 0, result.err
    study = study_of(tmp_path, "lr")
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 2 and all(1e-4 <= t.params["model.learning_rate"] <= 1e-2 for t in trials)
    assert len({t.params["model.learning_rate"] for t in trials}) == 2
    directory = tmp_path / "runs" / "tune-lr"
    best = yaml.safe_load((directory / "best.yaml").read_text())
    assert best["model"]["learning_rate"] == pytest.approx(study.best_trial.params["model.learning_rate"])
    assert best["data"]["batch_size"] == 8 and best["checkpoint"]["monitor"] == "val_loss"
    checkpoint = study.best_trial.user_attrs["best_checkpoint"]
    assert checkpoint.startswith(str(directory / f"trial_{study.best_trial.number}"))
    assert read_jsonl(run_cli("predict", checkpoint, "a good film").out)[0]["label"] in ("0", "1")
    table = (directory / "trials.md").read_text()
    rows = [line for line in table.splitlines() if line[:3] in ("| 0", "| 1")]
    assert len(rows) == 2 and "peak RSS MiB" in table and "best trial: " in result.out
    assert (directory / "history.png").stat().st_size > 10_000 and (directory / "importances.png").is_file()


def test_the_median_pruner_stops_a_trial_that_is_clearly_worse(fit_config, tmp_path):
    space = write_space(tmp_path / "prune.yaml", {"model.learning_rate": [1e-5, 1.0]})
    directory = tmp_path / "runs" / "tune-prune"
    directory.mkdir(parents=True)
    storage = f"sqlite:///{directory / 'study.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="minimize")
    for learning_rate in (1e-5, 1.0):  # a sane trial, then one whose loss blows up
        study.enqueue_trial({"model.learning_rate": learning_rate})
    options = ("--n_trials=2", "--metric=val_loss", "--pruner_startup_trials=1")
    result = run_cli(*tune_args(fit_config, space, tmp_path, *options))
    assert result.code == 0, result.err
    states = [t.state for t in study_of(tmp_path, "prune").get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED]
    assert "trial 1 pruned after 1 validation(s)" in result.out


def test_a_killed_tune_continues_the_same_study_when_run_again(fit_config, tmp_path):
    space = write_space(tmp_path / "again.yaml", {"data.batch_size": [4, 8, 16]})
    args = tune_args(fit_config, space, tmp_path, "--n_trials=2")
    process = subprocess.Popen(
        [sys.executable, "-m", "lightbert.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    directory = tmp_path / "runs" / "tune-again"
    while not (directory / "trial_1" / "fit.log").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # trial 1 is under way
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = study_of(tmp_path, "again").get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    result = run_cli(*args)
    assert result.code == 0, result.err
    after = study_of(tmp_path, "again").get_trials()
    assert after[0].value == before[0].value and after[0].state == TrialState.COMPLETE  # kept, not re-run
    assert after[1].state == TrialState.FAIL and "trial 1 was interrupted" in result.out
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in after) == 2 and len(after) == 3


def test_a_search_space_naming_an_option_fit_does_not_have_stops_before_any_trial(fit_config, tmp_path):
    space = write_space(tmp_path / "typo.yaml", {"model.learnin_rate": [1e-4, 1e-3]})
    result = run_cli(*tune_args(fit_config, space, tmp_path, "--n_trials=2"))
    assert_one_error_line(result, "learnin_rate")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.learning_rate": {"low": 1e-3, "high": 1e-4}}, "low < high"),
        ({"model.learning_rate": {"low": 0, "high": 1e-4, "log": True}}, "low > 0"),
        ({"data.batch_size": []}, "distinct choices"),
        ({"data.batch_size": "16"}, "neither a list"),
        ({"model.learning_rate": {"low": 1e-5, "high": 1e-4, "scale": "log"}}, "neither a list"),
    ],
)
def test_bad_distributions_are_refused(tmp_path, space, message):
    with pytest.raises(LightbertError, match=message):
        read_search_space(write_space(tmp_path / "space.yaml", space))


def test_a_trial_runs_in_a_fresh_process_when_the_launcher_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setattr(TrialLauncher, "command", (sys.executable, "-c", "raise SystemExit(1)"))
    log = tmp_path / "fit.log"
    with TrialLauncher() as launcher:
        code, peak_kib = launcher.run(["predict", "--help"], {}, log)
        assert code == 0 and peak_kib > 0 and "predict" in log.read_text()
        failed = launcher.process
        launcher.run(["predict", "--help"], {}, log)
        assert launcher.process is failed  # not started again for every trial
