"""The one way ragsnv writes a file: to a temporary name beside it, renamed over it at the end, so a reader
sees the old file or the new one, never half of one, and a failure leaves nothing behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stores.errors import output_error


@contextmanager
def atomic_path(path: str | Path, out: object | None = None) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed over `path` when the block ends, removed if it fails.
    A read-only or full file system is a UserError naming `out` (the output the user gave; default `path`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part-{os.getpid()}{path.suffix}")  # the suffix kept: it may name a format
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if (user_error := output_error(err, out if out is not None else path)) is None:
            raise
        raise user_error from None
    finally:
        tmp.unlink(missing_ok=True)
