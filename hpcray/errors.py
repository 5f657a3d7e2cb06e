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
    """A request the chosen site cannot satisfy; raised before anything is submitted."""


class SchedulerError(HpcrayError):
    """The batch scheduler refused or failed a command (submit, cancel, status)."""


class BootstrapError(HpcrayError):
    """The Ray cluster could not be brought up inside the allocation."""


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

