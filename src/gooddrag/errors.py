"""User-facing errors.

Anything a user can cause (a bad file, a bad point, a model that cannot be
reached) raises :class:`GoodDragError` with a one-line message that names the
bad value; the CLI prints that line and exits non-zero instead of a traceback.
"""


class GoodDragError(Exception):
    """An error caused by the user's inputs or environment, with a one-line message."""


class ModelUnavailableError(GoodDragError):
    """A model (or VAE) that is not on this machine and cannot be downloaded now."""
