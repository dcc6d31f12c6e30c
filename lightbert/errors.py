"""The exceptions users see: what is wrong, and what to do about it."""

from __future__ import annotations


class LightbertError(Exception):
    """A bad input or state the user can fix. The CLI prints ``error: <problem> (<hint>)`` and exits 2."""

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.problem} ({self.hint})" if self.hint else self.problem


class Terminated(Exception):
    """Training stopped by SIGTERM (preemption, ``kill``); ``path`` is the checkpoint saved on the way out."""

    def __init__(self, path: str | None) -> None:
        super().__init__("SIGTERM")
        self.path = path


def one_line(message: str) -> str:
    """A message of several lines (a parser's, a library's) as one line."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def global_rank() -> int:
    """This process's rank among the processes of a distributed run (0 when it runs alone): Lightning's, once its
    strategy has set the processes up, else what the launchers (torchrun, SLURM, Lightning) put in the environment."""
    import os
    import sys

    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")
    if rank_zero is not None and isinstance(getattr(rank_zero.rank_zero_only, "rank", None), int):
        return int(rank_zero.rank_zero_only.rank)
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def note(message: str) -> None:
    """A line on stderr for the user, from the first process only, so a distributed run says it once."""
    import sys

    if global_rank() == 0:
        print(message, file=sys.stderr)
