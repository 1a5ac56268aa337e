"""What every CLI shares: one-line errors with exit code 2, and parsing of small option formats."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import typer

from stores.errors import UserError, environment_error

EXIT_USER_ERROR = 2


class Device(str, Enum):
    """--device of every command: auto (CUDA if present), cpu or cuda."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"

@contextmanager
def clean_errors() -> Iterator[None]:
    """`error: ...` on stderr and exit 2 for a UserError, or for an environment failure with a path (read-only,
    disk full, permission, a folder where a file should be). Anything else is a bug: its traceback shows."""
    try:
        yield
    except UserError as err:
        _fail(str(err))
    except OSError as err:
        user_error = environment_error(err)
        if user_error is None:
            raise
        _fail(str(user_error))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_USER_ERROR) from None


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserError("--shard", f"cannot read {text!r}", "write it as i/n, e.g. 0/4") from None
    if not 0 <= index < count:
        raise UserError("--shard", f"{text!r} needs 0 <= i < n", "write it as i/n, e.g. 0/4")
    return index, count
