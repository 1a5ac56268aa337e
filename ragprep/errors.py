"""The one error type for bad user input: a single line naming the file, the record and the fix."""


class InputError(ValueError):
    """Bad input file or argument. str(err) is one line: `FILE: WHERE: PROBLEM; fix: FIX`."""

    def __init__(self, path: str, problem: str, fix: str, where: str | None = None) -> None:
        self.path, self.problem, self.fix, self.where = str(path), problem, fix, where
        location = f"{self.path}: {where}" if where else self.path
        super().__init__(f"{location}: {problem}; fix: {fix}")
