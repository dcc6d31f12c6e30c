"""Several processes for one command (``lightbert predict --devices N``): started here on one machine, or by
torchrun or SLURM on several, joined in a ``torch.distributed`` process group (gloo: the processes only exchange
small messages; the work is split by the data).

Training does not use this: Lightning starts and joins its own processes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightbert.errors import LightbertError, note

CHILD_RANK = "LIGHTBERT_RANK"  # set for the processes started here (their rank), with the group's size and port
CHILD_WORLD = "LIGHTBERT_WORLD_SIZE"
CHILD_PORT = "LIGHTBERT_PORT"


@dataclass
class Processes:
    """This process's place in the group: ``rank`` of ``world_size``; ``children`` are the processes it started."""

    rank: int = 0
    world_size: int = 1
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cleanup: list[Path] = field(default_factory=list)  # removed if the group fails

    @property
    def is_first(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def external_launch() -> tuple[int, int, str, int] | None:
    """Rank, size, main address and port when torchrun or SLURM started this process (None otherwise)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            env: Any = environment()
            if isinstance(env, SLURMEnvironment):
                env.set_world_size(int(os.environ["SLURM_NTASKS"]))
                env.set_global_rank(int(os.environ["SLURM_PROCID"]))
            return env.global_rank(), env.world_size(), env.main_address, env.main_port
    return None


def start(command: Sequence[str], devices: int, num_nodes: int, watching: threading.Event | None = None) -> Processes:
    """Join (or start, then join) the group of ``devices x num_nodes`` processes running ``lightbert COMMAND``.

    One machine: this process is the first, and starts the others (the same command, with their rank in the
    environment). Several machines: torchrun or SLURM starts every process, and each joins. With ``watching``,
    the processes started here watch each other (``_watch``) from before they join, until it is set: a process that
    dies while the others start never joins, and joining waits for it."""
    if CHILD_RANK in os.environ:
        rank, world, address, port = (
            int(os.environ[CHILD_RANK]),
            int(os.environ[CHILD_WORLD]),
            "127.0.0.1",
            int(os.environ[CHILD_PORT]),
        )
        children: list[subprocess.Popen[bytes]] = []
    else:
        launched = external_launch() if devices * num_nodes > 1 or "WORLD_SIZE" in os.environ else None
        if launched is not None:
            rank, world, address, port = launched
            if world != devices * num_nodes:
                raise LightbertError(
                    f"the launcher started {world} processes, and --devices x --num_nodes is {devices * num_nodes}",
                    "give the same number of processes to both",
                )
            children = []
        elif num_nodes > 1:
            raise LightbertError(
                "--num_nodes needs the processes on each machine started by torchrun or SLURM",
                "start the command with torchrun --nnodes ... or srun (see the README's Scaling out)",
            )
        elif devices == 1:
            return Processes()
        else:
            rank, world, address, port = 0, devices, "127.0.0.1", free_port()
            children = [_start_child(command, child, world, port) for child in range(1, world)]
    processes = Processes(rank, world, children)
    if watching is not None and (children or CHILD_RANK in os.environ):
        threading.Thread(target=_watch, args=(processes, os.getppid(), watching), daemon=True).start()
    try:
        torch.distributed.init_process_group(
            "gloo",
            init_method=f"tcp://{address}:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(days=1),  # a long file takes long; a process that dies is noticed below
        )
    except BaseException:
        if watching is not None:
            watching.set()  # the children stopped here are not a process that died
        stop_children(children)
        raise
    return processes


def _start_child(command: Sequence[str], rank: int, world: int, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, CHILD_RANK: str(rank), CHILD_WORLD: str(world), CHILD_PORT: str(port), "RANK": str(rank)}
    return subprocess.Popen([sys.executable, "-m", "lightbert.cli", *command], env=env, stdout=subprocess.DEVNULL)


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def barrier(processes: Processes, what: str) -> None:
    """Wait for every process; a process that stopped (died, or failed) ends the command here, in one line."""
    if processes.world_size == 1:
        return
    try:
        torch.distributed.barrier()
    except RuntimeError as err:
        raise LightbertError(
            f"a process of the group stopped before {what} ({str(err).splitlines()[0][:120]})",
            "see its error above; nothing was written",
        ) from None
    failed = [child.returncode for child in processes.children if child.poll() not in (None, 0)]
    if failed:
        raise LightbertError(f"a process of the group exited with code {failed[0]} before {what}", "see its error")


def broadcast(processes: Processes, value: Any) -> Any:
    """The first process's ``value``, in every process."""
    if processes.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def group(command: Sequence[str], devices: int, num_nodes: int) -> Iterator[Processes]:
    """``start`` the group; on the way out, wait for the processes this one started and leave the group."""
    watching = threading.Event()
    processes = start(command, devices, num_nodes, watching)
    try:
        yield processes
        for child in processes.children:
            if child.wait() != 0:
                raise LightbertError(f"a process of the group exited with code {child.returncode}", "see its error")
    except RuntimeError as err:
        if "gloo" not in str(err) and "Connection" not in str(err):
            raise
        # A collective whose partner process is gone (gloo: "Connection closed by peer").
        for path in processes.cleanup:
            shutil.rmtree(path, ignore_errors=True)
        raise LightbertError(
            f"a process of the group stopped ({str(err).splitlines()[0][:160]})", "see its error; nothing was written"
        ) from None
    finally:
        watching.set()
        stop_children(processes.children)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _watch(processes: Processes, parent: int, done: threading.Event) -> None:
    """The processes started here wait on each other in collectives that a dead process never joins, so: the first
    process ends the command (one line, its partial files removed) when another dies; the others end when the first
    one dies."""
    while not done.wait(0.5):
        failed = [child for child in processes.children if child.poll() not in (None, 0)]
        if failed:
            note(f"error: a process of the group exited with code {failed[0].returncode} (nothing was written)")
            for path in processes.cleanup:
                shutil.rmtree(path, ignore_errors=True)
            stop_children(processes.children)
            os._exit(2)
        if not processes.children and os.getppid() != parent:
            os._exit(1)  # the first process is gone
