"""Command-line conventions shared by every ``lightbert`` command: parse errors as one ``error:`` line, and boolean
options that read as flags (``--overwrite``) as well as with a value (``--overwrite true``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, get_args

from lightbert.errors import LightbertError, one_line

BOOLEAN_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")
# jsonargparse's message for a value that fits none of an option's types (``int | None``, ...), in one capture.
UNION_MISMATCH = re.compile(
    r"Does not validate against any of the Union subtypes Subtypes: \[(?P<types>.*?)\] Errors: .*"
    r"Given value: (?P<value>.*)$"
)


def _type_name(text: str) -> str:
    name = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text.strip())
    name = re.sub(r"^typing\.Literal\[(.*)\]$", r"one of \1", name)
    return "null" if name == "NoneType" else name


def readable(message: str) -> str:
    """A parse error in one line, a value that fits none of an option's types said as ``expected int or null, got
    'many'`` instead of jsonargparse's listing of each type's own error."""
    message = one_line(message)
    match = UNION_MISMATCH.search(message)
    if not match:
        return message
    types = " or ".join(_type_name(t) for t in re.split(r",\s*(?=<class|typing)", match["types"]))
    return f"{message[: match.start()]}expected {types}, got {match['value'].strip()!r}"


class OneLineErrors:
    """Mixed into a jsonargparse parser: its errors become ``error: <what> (run 'lightbert CMD --help' ...)``."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        prog = getattr(self, "prog", None)
        command = prog.split()[-1] if prog else "lightbert"
        raise LightbertError(readable(message), f"run 'lightbert {command} --help' for the options")


def boolean_options(actions: Iterable[Any]) -> set[str]:
    """The option strings of a jsonargparse parser's boolean options (``bool`` or ``bool | None``)."""
    names: set[str] = set()
    for action in actions:
        hint = getattr(action, "_typehint", None)
        if hint is bool or (hint is not None and bool in get_args(hint) and set(get_args(hint)) <= {bool, type(None)}):
            names.update(option for option in action.option_strings if option.startswith("--"))
    return names


def expand_flags(args: Sequence[str], flags: set[str]) -> list[str]:
    """``--flag`` not followed by a boolean word becomes ``--flag=true``, as users expect from other tools."""
    expanded = []
    for i, arg in enumerate(args):
        following = args[i + 1].lower() if i + 1 < len(args) else None
        expanded.append(f"{arg}=true" if arg in flags and following not in BOOLEAN_WORDS else arg)
    return expanded


def positionals_first(args: Sequence[str], actions: Iterable[Any]) -> list[str]:
    """``args`` with the positional arguments moved before the options, so that texts may follow options
    (``predict MODEL --base DIR "a text"``): argparse gives a ``nargs="*"`` positional nothing once an option has come
    between it and the first positional. ``--`` ends the options, for texts that begin with a dash."""
    takes_value = {option for action in actions if action.nargs != 0 for option in action.option_strings}
    positionals: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positionals += args[i + 1 :]
            break
        if arg.startswith("--") or (arg.startswith("-") and len(arg) == 2 and arg != "--"):
            options.append(arg)
            if "=" not in arg and arg in takes_value and i + 1 < len(args):
                options.append(args[i + 1])
                i += 1
        else:
            positionals.append(arg)
        i += 1
    return positionals + options
