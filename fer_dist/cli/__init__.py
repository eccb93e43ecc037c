"""The command-line layer: one Typer app per job (`fer_dist/cli/<job>.py`), and the `error:` contract.

    python jobs/train.py --help          # the same app as `fer-train --help`

`jobs/<job>.py` and the console scripts of pyproject.toml (`fer-train`, `fer-tune`,
`fer-evaluate`, `fer-predict`, `fer-convert-weights`) run these apps. A `UserError` anywhere
below a job becomes one line `error: <message>` on stderr and exit status 2, never a
traceback. Everything else is a bug and tracebacks. The library never imports this package.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from fer_dist.errors import UserError

EXIT_USER_ERROR = 2


def user_errors_exit(fn: Callable) -> Callable:
    """Wraps a job's main: UserError -> `error: ...` on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper


__all__ = ["EXIT_USER_ERROR", "UserError", "user_errors_exit"]
