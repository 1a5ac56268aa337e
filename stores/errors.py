"""The project's one user-facing error type (stores is the bottom layer, so every layer can raise it)."""

from __future__ import annotations


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
