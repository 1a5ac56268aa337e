"""One writer per output: a lock beside it (`OUT.lock`) that the operating system releases when its process
ends, however it ends, so a killed run never leaves an output locked."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stores.errors import UserError, output_error


@contextmanager
def output_lock(out: str | Path, option: str = "--out") -> Iterator[None]:
    """Hold `OUT.lock` (flock, exclusive) while writing `out`; a second process that asks for it while it is
    held stops at once with one line naming `out`. The file is removed when the holder finishes (a killed
    holder leaves it, unlocked, for the next run to take and remove)."""
    out = Path(out)
    path = out.with_name(f"{out.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held open for the whole `with`
    except OSError as err:
        if (user_error := output_error(err, out)) is None:
            raise
        raise user_error from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise UserError(out, f"another ragsnv process (pid {holder}) is writing it",
                            f"wait for it to finish, or give another {option}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        handle.close()
