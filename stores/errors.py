"""Errors raised when a store is missing, incomplete, of another format, or does not match a model."""


class StoreError(RuntimeError):
    """A store cannot be used as asked. str(err) is one line that names the store and the fix."""
