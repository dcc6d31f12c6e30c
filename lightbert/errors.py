"""The one exception type users see: what is wrong, and what to do about it."""

from __future__ import annotations


class LightbertError(Exception):
    """A bad input or state the user can fix. The CLI prints ``error: <problem> (<hint>)`` and exits 2."""

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.problem} ({self.hint})" if self.hint else self.problem
