"""The command-line layer: one Typer app per job (`fer_dist/cli/<job>.py`), and the `error:` contract.

    python jobs/train.py --help          # the same app as `fer-train --help`

`jobs/<job>.py` and the console scripts of pyproject.toml (`fer-train`, `fer-tune`,
`fer-evaluate`, `fer-predict`, `fer-convert-weights`) run these apps. A `UserError` anywhere
below a job becomes one line `error: <message>` on stderr and exit status 2, never a
traceback. Everything else is a bug and tracebacks. The library never imports this package.

Every flag that takes one of a fixed set of values is an Enum (`choices`): `--help` lists the
values and a wrong one is a parse error (`error: --preset 'nope': expected one of ...`).
Usage examples in a job's docstring sit in a paragraph that starts with a `\\b` line, so that
`--help` keeps each example on its own line with its indentation.
"""

from __future__ import annotations

import enum
import functools
import re
import sys
from collections.abc import Callable, Iterable

import typer
from typer.exceptions import TyperException

from fer_dist.errors import UserError

EXIT_USER_ERROR = 2

# An argument's help line shows its metavar (RUN_DIR), not also its Python type (`<list[str]>`).
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None


class App(typer.Typer):
    """A Typer app whose command-line parse errors (`--epochs abc`, an unknown flag) end like
    every other bad input: one line `error: ...` naming the flag, exit 2, no usage box."""

    def __init__(self, **kwargs):
        kwargs.setdefault("rich_markup_mode", None)  # click's plain help: reflowed paragraphs, any width, piped too
        kwargs.setdefault("context_settings", {"max_content_width": 100})
        super().__init__(add_completion=False, pretty_exceptions_enable=False, **kwargs)

    def __call__(self, *args, **kwargs):
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            from fer_dist import ray_cluster

            ray_cluster.leave()
            print("error: aborted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except TyperException as e:  # click's UsageError and its kin: a bad or missing flag
            ctx = getattr(e, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            print(f"error: {_bad_choice(e, message) or message}{hint}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None
        raise SystemExit(code if isinstance(code, int) else 0)


_NOT_ONE_OF = re.compile(r"^(?:Value error, )?(?P<q>['\"])(?P<value>.*)(?P=q) is not one of (?P<choices>.+?)\.?$", re.S)


def _bad_choice(error: Exception, message: str) -> str | None:
    """`--tta 'twice': expected one of none, flip, tencrop` for a value outside an Enum's choices."""
    match = _NOT_ONE_OF.search(getattr(error, "message", message))
    param = getattr(error, "param", None)
    if match is None or param is None:
        return None
    flag = max(getattr(param, "opts", None) or [param.name], key=len)
    choices = ", ".join(c.strip().strip("'") for c in match["choices"].split(","))
    return f"{flag} {match['value']!r}: expected one of {choices}"


def choices(name: str, values: Iterable[str]) -> type[enum.Enum]:
    """A str Enum for a flag's fixed set of values: `--help` lists them, Typer rejects others."""
    return enum.Enum(name, {v: v for v in values}, type=str)


def value(choice) -> str | None:
    """The string behind an Enum flag (None stays None)."""
    return choice.value if isinstance(choice, enum.Enum) else choice


def user_errors_exit(fn: Callable) -> Callable:
    """Wraps a job's main: UserError -> `error: ...` on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            from fer_dist import ray_cluster

            ray_cluster.leave()  # what Ray's workers print after this would bury the error line
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper


__all__ = ["App", "EXIT_USER_ERROR", "UserError", "choices", "user_errors_exit", "value"]
