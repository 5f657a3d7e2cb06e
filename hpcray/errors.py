"""Errors a user sees. Each renders as one line that says what to change."""

from __future__ import annotations


class HpcrayError(Exception):
    """Base for every error hpcray raises on purpose (the CLI prints these without a traceback)."""


class SpecError(HpcrayError):
    """A workflow or site file is malformed; the message names the file, line and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}")


class ResourceError(HpcrayError):
    """A request the chosen site cannot satisfy; raised before anything is submitted.
    `field` names the workflow field at fault; `located` adds its file and line."""

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None,
                 line: int | None = None) -> None:
        self.reason, self.field, self.path, self.line = message, field, path, line
        where = (f"{path}:{line}: " if line else f"{path}: ") if path else ""
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")

    def located(self, path: str, line: int | None) -> ResourceError:
        return ResourceError(self.reason, field=self.field, path=path, line=line)


class SchedulerError(HpcrayError):
    """The batch scheduler refused or failed a command (submit, cancel, status)."""


class BootstrapError(HpcrayError):
    """The Ray cluster could not be brought up inside the allocation."""


class RunStateError(HpcrayError):
    """The run is not in a state that allows this (growing a run that has ended)."""


class RunNotFound(HpcrayError):
    """No run directory matches the given job id, run id or path."""


class ServiceRequestError(HpcrayError, ValueError):
    """A request the service cannot take (unknown method, bad payload): the caller's fault.
    `field` names the request field at fault, when one is (an HTTP 400's `param`)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # keeps `field` across processes (Ray pickles it)
        return (type(self), (str(self), self.field))


class ServiceError(HpcrayError):
    """A service could not start, or failed; the message carries the service's own error."""


class ServiceCallError(HpcrayError):
    """The service's handler raised; the message is its exception, the replica is named."""

    def __init__(self, message: str, replica: str | None = None) -> None:
        super().__init__(message)
        self.replica = replica


class ReplicaLost(ServiceCallError):
    """A request's replica went away and no other replica could take it."""


class ServiceTimeout(ServiceCallError, TimeoutError):
    """No reply within the caller's timeout."""


class ProtocolError(ValueError):
    """Bytes that do not follow HPR1; the message says which field is wrong."""


class RemoteError(HpcrayError):
    """A remote endpoint failed the request; `reached` says whether a model may have seen it."""

    reached = True


class RemoteUnavailable(RemoteError):
    """No connection (refused, unreachable, reset before the reply): the model never saw the
    request, so it is safe to send it elsewhere."""

    reached = False


class RemoteTimeout(RemoteError, TimeoutError):
    """The request was sent and no reply came within the timeout: it may have run there, so
    it is not sent elsewhere, and a request ledger counts it lost."""


class RemoteAuthError(RemoteError):
    """HTTP 401/403: the API key is missing or wrong."""


class RemoteModelError(RemoteError):
    """The endpoint does not serve the model named in the workflow file."""


class RemoteProtocolError(RemoteError):
    """A reply that is not what the API promises: malformed, truncated, a stream that stops."""


class RemoteServerError(RemoteError):
    """HTTP 5xx: the endpoint failed; 503 (overloaded) did not reach a model."""


class NoInstance(RemoteError):
    """Every instance is cooling down or busy past the caller's timeout."""

    reached = False


class StageError(HpcrayError):
    """A task failed after its retries; the message names stage, item and error."""


class TaskTimeout(Exception):
    """The function ran past the stage's timeout."""
