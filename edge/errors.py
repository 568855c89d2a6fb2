"""The project's exception hierarchy: every error raised by `edge` derives from `EdgeError`."""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of every error the daemon and its tools raise on purpose."""


class TritonServerError(EdgeError):
    """The `tritonserver` process cannot be found, started, or made ready."""


class TritonServerExited(TritonServerError):
    """The `tritonserver` process exited (fatal: waiting longer will not help)."""


class TritonServerTimeout(TritonServerError):
    """The `tritonserver` process is running but did not report ready before the deadline."""


class ModelRepositoryError(EdgeError):
    """A model repository cannot be assembled: an input file is missing or invalid."""


class ConfigError(EdgeError):
    """The configuration file is missing, malformed or invalid."""


class TritonUnavailable(EdgeError):
    """Triton cannot be reached, or a model is not ready."""


class InferenceFailed(EdgeError):
    """Triton answered a request with an error."""


class CriticalTaskDied(EdgeError):
    """A task the daemon cannot serve without (intake, batch loop, publisher, health loop) ended."""


class OutboxError(EdgeError):
    """The durable outbox could not record or read results."""


class CaptureError(EdgeError):
    """The capture store could not write, read or prune die captures."""
