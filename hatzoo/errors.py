"""One exception family for every user-facing failure in hatzoo."""


class HATError(Exception):
    """Base of every error hatzoo raises for a user mistake or a bad file; the message says what to do."""


class TaskError(HATError, KeyError):
    """A task id that was never added, was forgotten, or is in the wrong state for the call."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class InputError(HATError, ValueError):
    """An argument or input tensor of the wrong shape, type or range."""


class UnsupportedModelError(HATError, TypeError):
    """A model no architecture policy knows how to turn into a HAT model."""


class CheckpointError(HATError):
    """A checkpoint that is missing, corrupted, or does not match its config."""


class HubError(HATError):
    """A Hub repository, revision or file that cannot be reached or published."""


class DataError(HATError):
    """A data set that is missing or a benchmark name that does not exist."""


class ExportError(HATError):
    """An ONNX export that failed or did not match the HAT model."""
