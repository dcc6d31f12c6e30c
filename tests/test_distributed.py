"""Training and prediction on several processes (torch.distributed, gloo, loopback only): the number of processes does
not change what is trained, validation is synced, one process writes, resume and SIGTERM work as on one process, and
a file predicted by two processes is the file one process writes. Real processes, few and small."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_one_error_line,
    commands,
    fit_args,
    make_base_model,
    quiet_trainer,
    run_cli,
    run_process,
    sentiment_rows,
    write_csv,
)

from lightbert import ClassificationDataModule, SequenceClassifier
from lightbert.checkpoint import read_checkpoint
from lightbert.distributed import free_port

pytestmark = pytest.mark.distributed
DDP = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "version_0" / "checkpoints" / "last.ckpt")["state_dict"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def popen(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True
    )


def wait_for_step(path: Path, step: int, processes: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and read_checkpoint(path)["global_step"] >= step):
        assert all(p.poll() is None for p in processes), processes[0].communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp-data")
    return {
        "t32": write_csv(tmp / "t32.csv", ["text", "label"], sentiment_rows(32, 1)),
        "t48": write_csv(tmp / "t48.csv", ["text", "label"], sentiment_rows(48, 3)),
        "t240": write_csv(tmp / "t240.csv", ["text", "label"], sentiment_rows(240, 3)),
        "v9": write_csv(tmp / "v9.csv", ["text", "label"], sentiment_rows(9, 2)),  # 5 + 4 rows on 2 processes
    }


@pytest.fixture(scope="module")
def no_dropout(tmp_path_factory):
    """A tiny BERT without dropout: two processes and one must then compute the same steps."""
    directory = make_base_model(tmp_path_factory.mktemp("no-dropout"), "bert")
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# -- two processes train what one process with twice the batch trains --------------------------------------------------


@pytest.fixture(scope="module")
def two_processes(no_dropout, data, tmp_path_factory):
    """The README's two-process fit command (tests/test_readme.py leaves it to this module), on the test's files."""
    root = tmp_path_factory.mktemp("two") / "runs"
    [command] = [c for c in commands(README, ("lightbert fit ",)) if "--trainer.devices 2" in c]
    args = shlex.split(command.replace("reviews.csv", str(data["t32"])))[1:]
    assert args[args.index("--data.batch_size") + 1] == "8" and args[args.index("--trainer.strategy") + 1] == "ddp"
    args += [a for a in fit_args(no_dropout, data["t32"], data["v9"], root, epochs=2)[1:] if "batch_size" not in a]
    args.append("--model.learning_rate=0.01")
    result = run_process(*args, "--trainer.accelerator=cpu")
    assert result.code == 0, result.err[-3000:]
    return root, result


def test_two_processes_of_batch_8_train_what_one_process_of_batch_16_trains(two_processes, no_dropout, data, tmp_path):
    root, _ = two_processes
    one = tmp_path / "one"
    args = fit_args(no_dropout, data["t32"], data["v9"], one, "--model.learning_rate=0.01", epochs=2, batch=16)
    assert run_cli(*args).code == 0
    assert read_checkpoint(root / "version_0" / "checkpoints" / "last.ckpt")["global_step"] == 4  # 32 rows / 16
    assert max_difference(weights(root), weights(one)) <= 1e-5


def test_one_process_writes_and_the_summary_is_said_once(two_processes):
    root, result = two_processes
    assert [p.name for p in root.iterdir()] == ["version_0"]
    assert result.out.count("\nbest: ") == 1 and result.out.count("\nlast: ") == 1


def test_validation_on_two_processes_counts_each_row_once_like_one_process(two_processes, data):
    root, _ = two_processes
    header, *rows = [line.split(",") for line in (root / "version_0" / "metrics.csv").read_text().splitlines()]
    last = next(row for row in reversed(rows) if row[header.index("val_loss")])
    synced = {name: float(last[header.index(name)]) for name in ("val_loss", "val_accuracy", "val_f1_macro")}
    datamodule = ClassificationDataModule(train=str(data["t32"]), validation=str(data["v9"]))
    ckpt = str(root / "version_0" / "checkpoints" / "last.ckpt")
    datamodule.use_checkpoint(read_checkpoint(ckpt)["lightbert"])
    [alone] = quiet_trainer().validate(SequenceClassifier(), datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    assert abs(synced["val_accuracy"] - alone["val_accuracy"]) <= 1e-6
    assert abs(synced["val_f1_macro"] - alone["val_f1_macro"]) <= 1e-6
    assert abs(synced["val_loss"] - alone["val_loss"]) <= 1e-5


# -- several nodes, exact resume, SIGTERM ------------------------------------------------------------------------------


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(program: str) -> list[str]:
    [command] = commands(README, (program + " ",))
    return shlex.split(command)


def torchrun(node_rank: int, port: int, args: list[str]) -> subprocess.Popen:
    """One machine's process of the README's torchrun command, run here (its host and port replaced), with
    ``args`` added to its options."""
    command = readme_command("torchrun")
    command[command.index("--node-rank") + 1] = str(node_rank)
    command[command.index("--master-addr") + 1] = "127.0.0.1"
    command[command.index("--master-port") + 1] = str(port)
    return popen([sys.executable, "-m", "torch.distributed.run", *command[1:], *args])


def srun(port: int, args: list[str]) -> list[subprocess.Popen]:
    """The README's srun command, run here as SLURM would run it: one process per task, with SLURM's environment."""
    command = readme_command("srun")
    tasks = int(command[command.index("--nodes") + 1]) * int(command[command.index("--ntasks-per-node") + 1])
    program = command[command.index("python") :]
    slurm = {"SLURM_NTASKS": str(tasks), "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": str(tasks)}
    slurm |= {"SLURM_JOB_NAME": "lightbert", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "127.0.0.1"}
    slurm |= {"MASTER_PORT": str(port), "SLURM_LOCALID": "0"}
    return [
        popen([sys.executable, *program[1:], *args], {**slurm, "SLURM_PROCID": str(t), "SLURM_NODEID": str(t)})
        for t in range(tasks)
    ]


@pytest.fixture(scope="module")
def two_nodes(tiny_bert, data, tmp_path_factory):
    """Two "nodes" of one process each (torchrun), dropout on, last.ckpt at every step: the run to resume into."""
    root = tmp_path_factory.mktemp("nodes") / "runs"
    args = fit_args(tiny_bert, data["t48"], data["v9"], root, "--checkpoint.last_every_n_steps=1", epochs=2, batch=4)
    port = free_port()
    nodes = [torchrun(rank, port, args[1:]) for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    return root, args


def test_a_two_process_run_killed_and_resumed_ends_with_the_uninterrupted_two_node_weights(two_nodes, tmp_path):
    reference, args = two_nodes
    root = tmp_path / "runs"
    args = [a.replace(str(reference), str(root)) for a in args]
    run = popen([sys.executable, "-m", "lightbert.cli", *args, *DDP, "--trainer.devices=2"])
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    wait_for_step(last, 4, [run])
    os.killpg(run.pid, signal.SIGKILL)  # every process of the run, mid-epoch
    run.wait()
    assert read_checkpoint(last)["global_step"] < 12
    result = run_process(*[a.replace(str(root), str(tmp_path / "resumed")) for a in args], *DDP,
                         "--trainer.devices=2", f"--ckpt_path={last}")  # fmt: skip
    assert result.code == 0, result.err[-3000:]
    # the resumed run continues its own run directory (the other root asked for is not used)
    assert max_difference(weights(root), weights(reference)) <= 1e-6  # nodes or devices, same run


def test_a_two_process_checkpoint_resumed_on_one_process_says_why_not(two_nodes):
    reference, args = two_nodes
    last = reference / "version_0" / "checkpoints" / "last.ckpt"
    result = run_cli(*args, f"--ckpt_path={last}", "--trainer.max_epochs=3", "--trainer.devices=1")
    assert_one_error_line(result, "written by 2 process(es) x batch 4, this run has 1 x 4")


def test_sigterm_to_every_slurm_task_saves_last_once_and_each_exits_143(tiny_bert, data, tmp_path):
    root = tmp_path / "runs"
    args = fit_args(tiny_bert, data["t240"], data["v9"], root, "--checkpoint.last_every_n_steps=1", epochs=2, batch=4)
    ranks = srun(free_port(), args[1:])
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    wait_for_step(last, 3, ranks)
    for rank in ranks:  # as SLURM does when it preempts a job
        rank.send_signal(signal.SIGTERM)
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [143, 143], outputs[0][1][-2000:]
    errors = [[line for line in err.splitlines() if line.startswith("error:")] for _, err in outputs]
    assert errors[0] == [f"error: stopped by SIGTERM (saved {last}; resume with --ckpt_path {last})"]
    assert errors[1] == []  # said once
    assert 3 <= read_checkpoint(last)["global_step"] < 120


# -- strategies these CPUs do not run ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "missing"), [("fsdp", "requires a GPU accelerator"), ("deepspeed", "DeepSpeed")])
def test_fsdp_and_deepspeed_stop_with_one_line_naming_what_is_missing(strategy, missing, tiny_bert, data, tmp_path):
    args = fit_args(tiny_bert, data["t32"], data["v9"], tmp_path / "runs", f"--trainer.strategy={strategy}")
    assert_one_error_line(run_cli(*args, "--trainer.devices=2"), missing)
    assert not (tmp_path / "runs").exists()


# -- prediction --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    rows = sentiment_rows(5_000, seed=5)  # two chunks of up to 4,096 texts: one per process
    path.write_text("".join(text + "\n" for text, _ in rows), encoding="utf-8")
    return path


def test_two_machines_predict_a_file_into_the_file_one_process_writes(trained_checkpoint, texts, tmp_path):
    assert run_cli("predict", trained_checkpoint, "--input", texts, "--output", tmp_path / "one.jsonl").code == 0
    # Two "machines" of one process each, started by torchrun as the README's training command is.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    launcher += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "lightbert.cli", "predict"]
    args = [str(trained_checkpoint), "--input", str(texts), "--output", str(tmp_path / "two.jsonl"), "--num_nodes=2"]
    nodes = [popen([*launcher[:3], f"--node-rank={rank}", *launcher[3:], *args]) for rank in (0, 1)]
    errors = [node.communicate(timeout=300)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-2000:]
    assert "wrote 5000 predictions" in "".join(errors) and "(2 processes)" in "".join(errors)
    assert_same_predictions(tmp_path / "two.jsonl", tmp_path / "one.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]  # no shards left


def assert_same_predictions(got: Path, expected: Path) -> None:
    """The same records in the same order: labels equal, numbers equal up to float rounding (another process pads
    its batches to other lengths, which changes the last digits)."""
    got_rows = [json.loads(line) for line in got.read_text().splitlines()]
    expected_rows = [json.loads(line) for line in expected.read_text().splitlines()]
    assert len(got_rows) == len(expected_rows)
    for a, b in zip(got_rows, expected_rows, strict=True):
        assert a.keys() == b.keys() and a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a.get("probs", {}) == pytest.approx(b.get("probs", {}), abs=1e-5)


@pytest.mark.parametrize("when", ["before joining the group", "at work"])
def test_a_prediction_process_that_dies_fails_the_command_in_one_line_and_writes_nothing(
    when, trained_checkpoint, texts, tmp_path
):
    big = tmp_path / "big.txt"
    big.write_text(texts.read_text() * 8, encoding="utf-8")  # still at work when the second process is killed
    run = popen([sys.executable, "-m", "lightbert.cli", "predict", str(trained_checkpoint), "--input", str(big),
                 "--output", str(tmp_path / "out.jsonl"), "--devices", "2"])  # fmt: skip
    try:
        children: list[int] = []
        deadline = time.monotonic() + 120
        while not children or (when == "at work" and not list(tmp_path.glob(".out.jsonl.*.partial/rank-1.jsonl"))):
            assert run.poll() is None and time.monotonic() < deadline
            children = [int(c) for f in Path(f"/proc/{run.pid}/task").glob("*/children") for c in f.read_text().split()]
            time.sleep(0.05)
        os.kill(children[0], signal.SIGKILL)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:  # the command hung: leave no process behind
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "a process of the group" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]  # no output, no shards


def test_evaluating_on_two_processes_gives_the_one_process_report(trained_checkpoint, tmp_path):
    rows = [(t, ["negative", "positive"][int(y)]) for t, y in sentiment_rows(4500, seed=6)]  # chunks of 4,096 and 404
    path = write_csv(tmp_path / "labelled.csv", ["text", "label"], rows)
    assert run_cli("evaluate", trained_checkpoint, "--input", path, "--output_dir", tmp_path / "one").code == 0
    result = run_process("evaluate", trained_checkpoint, "--input", path, "--output_dir", tmp_path / "two",
                         "--devices", "2")  # fmt: skip
    assert result.code == 0, result.err[-2000:]
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert two["metrics"] == one["metrics"] and two["confusion_matrix"] == one["confusion_matrix"]
    assert two["worst_errors"] == one["worst_errors"] and two["rows"] == 4500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelled.csv", "one", "two"]  # no scratch files left
