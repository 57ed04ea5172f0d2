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


class CardError(InputError):
    """A card value that is missing, unknown or out of range; the message names the file and the key."""


class DataArgumentError(DataError, ValueError):
    """A benchmark option with a wrong value; a DataError and a ValueError at once."""


class StepFailed(HATError):
    """A demo step that failed, with its number and name."""


class BundleError(ExportError):
    """A bundle folder or manifest that is missing, malformed, or does not match its files."""


class RequestError(HATError):
    """A bad request: carries the HTTP status to answer with (and, for a 503, when to retry)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self) -> tuple:  # crosses from the parse processes
        return (type(self), (self.status, str(self), self.retry_after))


class ClientError(HATError):
    """An HTTP error from the server (status and the server's message) or an unreachable server."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServingError(HATError):
    """A request the runtime cannot serve: unknown model or task, or an overloaded queue."""


class UnknownModelError(ServingError, KeyError):
    """A model or task name that is not in any loaded bundle."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class OverloadedError(ServingError):
    """The per-task request queue is full; the client should retry later."""


class StartupError(HATError):
    """A bundle that cannot be served as it is: its manifest and graphs disagree."""
