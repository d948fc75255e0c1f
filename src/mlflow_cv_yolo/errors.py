"""The suite's error types, one place: each says what failed in one line, naming
the option, file or service."""


class InputError(ValueError):
    """An option, file or value the session cannot use; the message is one line naming it."""


class StackError(RuntimeError):
    """The tracking stack could not be started; one line (and a service's log tail)."""


class ServiceError(RuntimeError):
    """A service that would not start; the message names it and quotes its log."""


class StackInUse(RuntimeError):
    """The folder belongs to a live session; the message names it."""


class DeviceError(ValueError):
    """A --device that this machine cannot honour; one line naming the value."""


class GridError(ValueError):
    """A grid file or override that cannot be used; the message names the key."""


class WeightsError(RuntimeError):
    """The starting weights cannot be had as asked; the message names the file."""


class DatasetError(ValueError):
    """A source or request the builder cannot use; one line, naming the file (and line)."""


class StaleDataError(RuntimeError):
    """The dataset on disk is not the one dvc.lock records."""


class LineageError(RuntimeError):
    """A DVC operation (push, pull, remote configuration) failed; the message says which."""


class DataUnreachable(RuntimeError):
    """This node can neither see the session's data nor fetch it; one line saying why."""
