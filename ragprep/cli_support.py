"""What every CLI shares: one-line errors with exit code 2, and parsing of small option formats."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from stores.errors import UserError

EXIT_USER_ERROR = 2

_ENVIRONMENT_FIXES = {
    errno.ENOSPC: "free space there, or write somewhere else",
    errno.EDQUOT: "free space there, or write somewhere else",
    errno.EROFS: "write to a file system that is not read-only",
    errno.EACCES: "write where you have permission, or change the permissions",
    errno.EPERM: "write where you have permission, or change the permissions",
    errno.EISDIR: "give a file name, not a folder",
    errno.ENOTDIR: "a part of the path is a file: give a path through folders",
    errno.EEXIST: "remove it, or give another name",
    errno.ENOENT: "check the path",
}


@contextmanager
def clean_errors() -> Iterator[None]:
    """`error: ...` on stderr and exit 2 for a UserError, or for an environment failure with a path (read-only,
    disk full, permission, a folder where a file should be). Anything else is a bug: its traceback shows."""
    try:
        yield
    except UserError as err:
        _fail(str(err))
    except OSError as err:
        if err.errno not in _ENVIRONMENT_FIXES or not err.filename:
            raise
        _fail(str(UserError(err.filename, os.strerror(err.errno), _ENVIRONMENT_FIXES[err.errno])))


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
