"""``lightbert tune``: a hyper-parameter search over ``lightbert fit`` runs on Optuna.

Every trial is an ordinary ``lightbert fit`` run in a process of its own (``runs/tune-NAME/trial_K/``), so nothing a
trial allocates outlives it and each trial's peak memory is measured alone; the processes are forked from a launcher
that has imported Lightning and Transformers once (``TrialLauncher``), so a trial starts at once. The study lives in
an SQLite file (by default in the tune directory): the trial processes report the tuned metric to it after every
validation (Optuna's median pruner reads it and can stop a trial that is clearly worse), and running the same
command again after an interruption, ``kill -9`` included, continues the study: finished trials are kept, a trial
left running is marked failed, and new trials run until ``n_trials`` trials have completed or been pruned.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightbert.callbacks import TRIAL_ENVIRONMENT, metric_mode
from lightbert.errors import LightbertError, one_line
from lightbert.model import METRIC_NAMES
from lightbert.safety import atomic_write, check_writable_directory

TUNABLE_METRICS = ("val_loss", *sorted({f"val_{name}" for names in METRIC_NAMES.values() for name in names}))
MAX_FAILURES_IN_A_ROW = 3


@dataclass
class Dimension:
    """One option to search: ``choices`` (categorical) or a ``low``-``high`` range (``integer`` or float,
    ``log``-uniform or not, with an optional ``step``)."""

    name: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        assert self.low is not None and self.high is not None
        if self.integer:
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def example(self) -> Any:
        """A value of the dimension, to check the option against ``fit``'s parser before any trial."""
        if self.choices is not None:
            return self.choices[0]
        return int(self.low) if self.integer else self.low  # type: ignore[arg-type]


def read_search_space(path: str | Path) -> list[Dimension]:
    """The search space in ``path`` (YAML): ``option: [a, b, c]`` (categorical) or ``option: {low: L, high: H,
    log: true, step: S}`` (integers when ``low`` and ``high`` are both integers), options named as ``fit`` names them
    without the dashes (``model.learning_rate``, ``data.batch_size``, ``trainer.max_epochs``)."""
    source = Path(path)
    if not source.is_file():
        raise LightbertError(f"no search space file {source}", "write a YAML file of option: distribution")
    try:
        space = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise LightbertError(f"{source} is not valid YAML: {one_line(str(err))[:200]}", "fix the file") from None
    if not isinstance(space, dict) or not space:
        raise LightbertError(
            f"{source} names no options to search",
            "write e.g. 'model.learning_rate: {low: 1e-5, high: 1e-4, log: true}'",
        )
    return [_dimension(str(name).lstrip("-"), spec, source) for name, spec in space.items()]


def _dimension(name: str, spec: Any, source: Path) -> Dimension:
    where = f"{source}: {name}"
    if isinstance(spec, list):
        if not spec or len({json.dumps(v, sort_keys=True) for v in spec}) != len(spec):
            raise LightbertError(f"{where} needs distinct choices", "write e.g. 'data.batch_size: [16, 32]'")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            raise LightbertError(f"{where} has a choice that is not a number, a string or a boolean", "fix the list")
        return Dimension(name, choices=list(spec))
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log", "step"}:
        raise LightbertError(
            f"{where} is neither a list of choices nor {{low, high[, log, step]}}",
            "write e.g. 'model.learning_rate: {low: 1e-5, high: 1e-4, log: true}'",
        )
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if not numbers or not low < high:
        raise LightbertError(f"{where} needs numbers low < high, not {low} and {high}", "fix the range")
    if not isinstance(log, bool) or (log and low <= 0):
        raise LightbertError(f"{where}: a log range needs log: true and low > 0", "fix the range")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0 or log):
        raise LightbertError(f"{where}: step must be a positive number, without log", "fix the range")
    integer = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    return Dimension(name, low=low, high=high, log=log, step=step, integer=integer)


def option_args(params: dict[str, Any]) -> list[str]:
    """``--name=value`` for ``fit``, values written as YAML reads them back."""
    return [f"--{name}={value if isinstance(value, str) else json.dumps(value)}" for name, value in params.items()]


def resolved_config(config: str | Path, args: list[str]) -> str:
    """``lightbert fit --config CONFIG ARGS --print_config``, run here: the resolved YAML, or the one-line error of
    an option or value ``fit`` does not take."""
    from lightbert import lightning_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        lightning_cli.run(["fit", f"--config={config}", *args, "--print_config"])
    text = out.getvalue()
    if not text.strip():
        raise LightbertError(f"lightbert fit --config {config} {' '.join(args)} prints no config", "check the options")
    return text


@dataclass
class TuneResult:
    study: Any
    directory: Path
    best_config: Path | None
    best_checkpoint: str | None
    figures: list[Path]


def tune(
    config: str | Path,
    search: str | Path,
    n_trials: int,
    timeout: float | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    metric: str = "val_loss",
    direction: str | None = None,
    seed: int = 42,
    root: str | Path = "runs",
    pruner_startup_trials: int = 2,
) -> TuneResult:
    """Search ``search``'s options over ``fit --config config`` (see the module docstring); the study, the run
    directories, ``trials.md``, ``best.yaml`` and the figures land in ``root/tune-NAME``."""
    import optuna

    if n_trials < 1:
        raise LightbertError(f"n_trials must be at least 1, not {n_trials}", "pass --n_trials 20")
    if timeout is not None and timeout <= 0:
        raise LightbertError(f"timeout must be positive, not {timeout}", "pass --timeout 3600 (seconds)")
    if metric not in TUNABLE_METRICS:
        raise LightbertError(f"--metric {metric} is not a metric fit logs", f"use one of {', '.join(TUNABLE_METRICS)}")
    direction = direction or ("min" if metric_mode(metric) == "min" else "max")
    if direction not in ("min", "max"):
        raise LightbertError(f"unknown direction {direction!r}", "use min or max")
    if not Path(config).is_file():
        raise LightbertError(f"no fit config {config}", "write one with: lightbert fit --print_config > fit.yaml")
    if pruner_startup_trials < 0:
        raise LightbertError("pruner_startup_trials must be 0 or more", "pass --pruner_startup_trials 2")
    dimensions = read_search_space(search)
    name = study_name or Path(search).stem
    if not re.fullmatch(r"[\w.-]+", name):
        raise LightbertError(f"study name {name!r} must be letters, digits, '.', '_' or '-'", "pass --study_name NAME")
    fixed = ["--trainer.enable_progress_bar=false", f"--checkpoint.monitor={metric}", f"--checkpoint.mode={direction}"]
    # Every option and value must be fit's before any trial runs: each dimension's example value, checked by fit.
    resolved_config(config, [*option_args({d.name: d.example() for d in dimensions}), *fixed])
    directory = check_writable_directory(Path(root) / f"tune-{name}", "tune directory", create=False)
    if storage is None:  # the study beside its trials
        directory.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(directory / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=pruner_startup_trials, n_warmup_steps=0),
            direction="minimize" if direction == "min" else "maximize",
            load_if_exists=True,
        )
    except Exception as err:  # an unknown scheme, a path that cannot be opened, a study of another direction
        raise LightbertError(
            f"cannot open the study in {storage}: {one_line(str(err))[:200]}", "check --storage"
        ) from None
    directory.mkdir(parents=True, exist_ok=True)
    _fail_interrupted(study)
    started = time.monotonic()
    failures = 0
    with TrialLauncher() as launcher:
        while _counted(study) < n_trials:
            if timeout is not None and time.monotonic() - started > timeout:
                print(f"tune: --timeout {timeout:g} s reached; {_counted(study)} of {n_trials} trials done")
                break
            state = _run_trial(
                study, dimensions, config, fixed, metric, direction, storage, directory, pruner_startup_trials,
                launcher,
            )  # fmt: skip
            failures = failures + 1 if state == "failed" else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise LightbertError(
                    f"{failures} trials in a row failed; the last one's output is in {directory}",
                    "read its fit.log, fix the config or the search space, and run the same command again to continue",
                )
    return _finish(study, directory, config, fixed, metric)


def _counted(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _fail_interrupted(study: Any) -> None:
    """Trials left running by a tune process that was killed: failed (their places are taken by new trials)."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        print(f"tune: trial {trial.number} was interrupted; marked failed")


def _run_trial(
    study: Any,
    dimensions: list[Dimension],
    config: str | Path,
    fixed: list[str],
    metric: str,
    direction: str,
    storage: str,
    directory: Path,
    pruner_startup_trials: int,
    launcher: TrialLauncher,
) -> str:
    """One trial in a process of its own; returns its state (complete, pruned or failed)."""
    from optuna.trial import TrialState

    trial = study.ask()
    params = {d.name: d.suggest(trial) for d in dimensions}
    run_dir = directory / f"trial_{trial.number}"
    run_dir.mkdir(parents=True, exist_ok=True)
    result = run_dir / "trial.json"
    reporter = {
        "storage": storage,
        "study": study.study_name,
        "trial_id": trial._trial_id,
        "metric": metric,
        "direction": "minimize" if direction == "min" else "maximize",
        "result": str(result.resolve()),
        "pruner_startup_trials": pruner_startup_trials,
    }
    command = ["fit", f"--config={config}", *option_args(params), *fixed, f"--trainer.default_root_dir={run_dir}"]
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    print(f"tune: trial {trial.number}: {shown}", flush=True)
    start = time.monotonic()
    code, peak_kib = launcher.run(command, {TRIAL_ENVIRONMENT: json.dumps(reporter)}, run_dir / "fit.log")
    seconds = time.monotonic() - start
    trial.set_user_attr("seconds", round(seconds, 1))
    trial.set_user_attr("peak_rss_mib", round(peak_kib / 1024, 1))
    trial.set_user_attr("run_dir", str(run_dir))
    outcome = json.loads(result.read_text()) if result.is_file() else None
    if code != 0 or outcome is None:
        study.tell(trial, state=TrialState.FAIL)
        print(f"tune: trial {trial.number} failed after {seconds:.0f} s (see {run_dir / 'fit.log'})", flush=True)
        return "failed"
    trial.set_user_attr("best_checkpoint", outcome.get("best_checkpoint"))
    if outcome["state"] == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        print(f"tune: trial {trial.number} pruned after {outcome['validations']} validation(s)", flush=True)
        return "pruned"
    if outcome["value"] is None:
        study.tell(trial, state=TrialState.FAIL)
        print(f"tune: trial {trial.number} logged no {metric}", flush=True)
        return "failed"
    study.tell(trial, outcome["value"])
    print(f"tune: trial {trial.number}: {metric} {outcome['value']:.4f} in {seconds:.0f} s", flush=True)
    return "complete"


class TrialLauncher:
    """Starts each trial's ``lightbert fit`` as a process of its own, forked from a launcher process that has imported
    fit's modules once (``serve_trials``): a fresh Python spends seconds importing Lightning and Transformers before
    a trial can start, a fork a few milliseconds. The trial is still a process of its own: what it allocates ends
    with it, and its peak memory is its own (``wait4``). The launcher ends with the ``with`` block."""

    command: tuple[str, ...] = (
        sys.executable,
        "-c",
        "from lightbert.cli import main; from lightbert.tuning import serve_trials; serve_trials(main)",
    )

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.forking = hasattr(os, "fork")  # not on Windows; off once the launcher has failed (no retry per trial)

    def __enter__(self) -> TrialLauncher:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # type: ignore[union-attr]  # the launcher's end of input: it exits
            self.process.wait()

    def run(self, argv: list[str], env: dict[str, str], log: Path) -> tuple[int, int]:
        """Run ``lightbert ARGV`` with ``env`` added to the environment and its output in ``log``; returns its exit
        code and its peak resident memory in KiB."""
        log.write_bytes(b"")  # there at once, as the trial's record
        if not self.forking:
            return self.run_alone(argv, env, log)
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"argv": argv, "env": env, "log": str(log)}
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
        except OSError:
            answer = b""
        if not answer:  # the launcher could not start or was killed: fresh processes, whose errors go to the log
            self.forking = False
            return self.run_alone(argv, env, log)
        done = json.loads(answer)
        return int(done["code"]), int(done["peak_kib"])

    @staticmethod
    def run_alone(argv: list[str], env: dict[str, str], log: Path) -> tuple[int, int]:
        """``run`` in a fresh Python process."""
        with open(log, "wb") as output:
            child = subprocess.Popen([sys.executable, "-m", "lightbert.cli", *argv], stdout=output,
                                     stderr=subprocess.STDOUT, env={**os.environ, **env})  # fmt: skip
            _, status, usage = os.wait4(child.pid, 0)
        return os.waitstatus_to_exitcode(status), usage.ru_maxrss


def serve_trials(main: Callable[[list[str]], int]) -> None:
    """The trial launcher's loop (see ``TrialLauncher``): imports what ``lightbert fit`` imports, then for each
    request on stdin (one JSON line) forks a process that runs ``main(argv)`` and answers its exit code and peak
    memory."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the trial's and tune's to act on, not the launcher's
    import transformers.modeling_utils  # noqa: F401  (imported lazily once a model is built)

    import lightbert.lightning_cli  # noqa: F401  (Lightning, torchmetrics, jsonargparse)

    answers = sys.stdout.buffer
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_forked(request, main)
        _, status, usage = os.wait4(pid, 0)
        answers.write(json.dumps({"code": os.waitstatus_to_exitcode(status), "peak_kib": usage.ru_maxrss}).encode())
        answers.write(b"\n")
        answers.flush()


def _run_forked(request: dict[str, Any], main: Callable[[list[str]], int]) -> None:
    """In the forked process: output to the trial's log, its environment, ``lightbert ARGV``; never returns."""
    import logging
    import signal
    import traceback

    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # not the launcher's requests
        os.close(null)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.update(request["env"])
        sys.argv = ["lightbert", *request["argv"]]
        code = main(request["argv"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def trials_table(study: Any, metric: str) -> str:
    """Every trial: its number, state, parameters, metric, time and peak memory, as a Markdown table."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    lines = [
        f"| trial | state | {' | '.join(names)} | {metric} | seconds | peak RSS MiB |",
        "| ---: | --- |" + " --- |" * len(names) + " ---: | ---: | ---: |",
    ]
    for t in trials:
        values = [_shown(t.params.get(name, "")) for name in names]
        value = f"{t.value:.4f}" if t.value is not None else ""
        attrs = t.user_attrs
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | {' | '.join(values)} | {value} | {attrs.get('seconds', '')} |"
            f" {attrs.get('peak_rss_mib', '')} |"
        )
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finish(study: Any, directory: Path, config: str | Path, fixed: list[str], metric: str) -> TuneResult:
    """The table, best.yaml, the best checkpoint and the figures."""
    table = trials_table(study, metric)
    print(table)
    atomic_write(directory / "trials.md", lambda f: _write_text(f, table + "\n"), what="trials table")
    best_config, best_checkpoint = None, None
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if completed:
        best = study.best_trial
        text = resolved_config(config, [*option_args(best.params), *fixed])
        best_config = directory / "best.yaml"
        atomic_write(best_config, lambda f: _write_text(f, text), what="best config")
        best_checkpoint = best.user_attrs.get("best_checkpoint")
        print(f"best trial: {best.number}, {metric} {best.value:.4f}: {_params(best.params)}")
        print(f"best config: {best_config} (lightbert fit --config {best_config})")
        print(f"best checkpoint: {best_checkpoint}")
    else:
        print("no trial completed: no best config")
    figures = _figures(study, directory)
    return TuneResult(study, directory, best_config, best_checkpoint, figures)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_shown(v)}" for k, v in params.items())


def _write_text(f: Any, text: str) -> None:
    f.write(text.encode("utf-8"))


def _figures(study: Any, directory: Path) -> list[Path]:
    """Optuna's optimisation history and parameter importances, as PNG files (importances need two completed
    trials and a parameter that varied)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots

    written = []
    for name, plot in (("history", plots.plot_optimization_history), ("importances", plots.plot_param_importances)):
        try:
            with contextlib.redirect_stderr(io.StringIO()), _no_experimental_warnings():
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. every trial scored the same
            print(f"tune: no {name} figure ({one_line(str(err))[:120]})")
            continue
        figure: Any = axes.figure
        path = directory / f"{name}.png"
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


@contextlib.contextmanager
def _no_experimental_warnings() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
