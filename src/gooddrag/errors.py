"""User-facing errors.

Anything a user can cause (a bad file, a bad point, a model that cannot be
reached) raises :class:`GoodDragError` with a one-line message that names the
bad value; the CLI prints that line and exits non-zero instead of a traceback.
"""


class GoodDragError(Exception):
    """An error caused by the user's inputs or environment, with a one-line message."""


class InputsCannotWorkError(GoodDragError):
    """Inputs that are well formed but cannot give an edit (a handle outside the mask, a mask
    that marks nothing editable): refused before any work; the CLI exits with 2."""

    exit_code = 2


class ModelUnavailableError(GoodDragError):
    """A model (or VAE) that is not on this machine and cannot be downloaded now."""


NO_MASK_WARNING = "no mask: every pixel may change; paint the region to keep the rest"
"""What a run without a mask is told, in the CLI, the library's log and the web UI (the
authors' code lets everything change then)."""
EMPTY_MASK = "the mask marks nothing as editable (white = may change); give no mask to let everything change"
"""Why a given mask with no editable pixel is refused."""
