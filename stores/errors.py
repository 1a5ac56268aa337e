"""The project's one user-facing error type (stores is the bottom layer, so every layer can raise it)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class UserError(Exception):
    """Something the user can fix: a bad file, a bad option, a store that does not fit, or an environment that
    refuses (read-only, full disk). str(err) is one line: `SOURCE: PLACE: PROBLEM; fix: FIX`.

    source: the file, store or option (`--k`) at fault; place: where in it (`chr20:6100`, a sample id), if any.
    The CLIs print it as `error: ...` and exit 2; any other exception is a bug and keeps its traceback.
    """

    def __init__(self, source: object, problem: str, fix: str, place: str | None = None) -> None:
        self.source, self.problem, self.fix, self.place = str(source), problem, fix, place
        location = f"{self.source}: {place}" if place else self.source
        super().__init__(f"{location}: {problem}; fix: {fix}")


ENVIRONMENT_FIXES = {
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
"""What to do about an OSError that the environment, not the program, caused."""


def environment_error(err: OSError, path: object | None = None) -> UserError | None:
    """A UserError for a read-only, full or forbidden place (naming `path`, or the error's own file name);
    None for any other OSError (a bug, which keeps its traceback)."""
    where = err.filename or path
    if err.errno not in ENVIRONMENT_FIXES or where is None:
        return None
    return UserError(where, os.strerror(err.errno), ENVIRONMENT_FIXES[err.errno])


def output_error(err: OSError, out: object) -> UserError | None:
    """`environment_error` naming the output the user gave (`--out`), not the temporary or lock file beside it
    that the system names; an OSError without an errno while writing (pysam's BGZF reports a full disk so) is
    taken for a full file system. None for any other OSError (a bug)."""
    if err.errno is None:
        return UserError(out, f"could not be written ({err}; the file system may be full)",
                         ENVIRONMENT_FIXES[errno.ENOSPC])
    if err.errno not in ENVIRONMENT_FIXES:
        return None
    return UserError(out, os.strerror(err.errno), ENVIRONMENT_FIXES[err.errno])


def check_writable(folder: Path, fix: str, output: Path | None = None) -> None:
    """Create a file in `folder` and remove it: a UserError naming the folder (or the `output` to be written
    there, as the user gave it) and `fix` if that fails, so a command refuses an unwritable output before it
    does any work."""
    probe = folder / f".probe-{os.getpid()}"
    try:
        probe.open("wb").close()
    except OSError as err:
        reason = os.strerror(err.errno)
        if output is not None:
            raise UserError(output, f"cannot write its folder ({reason})", fix) from None
        raise UserError(folder, f"cannot write there ({reason})", fix) from None
    probe.unlink()
