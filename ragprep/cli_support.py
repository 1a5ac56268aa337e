"""What every CLI shares: one-line errors with a non-zero exit, and parsing of small option formats."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ragprep.errors import InputError
from stores.errors import StoreError

EXIT_BAD_INPUT = 2


@contextmanager
def clean_errors() -> Iterator[None]:
    """Turn the project's input and store errors into `error: ...` on stderr and exit code 2."""
    try:
        yield
    except (InputError, StoreError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: write it as i/n, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return index, count
