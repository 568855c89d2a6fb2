"""The calibration package's errors: every error it raises on purpose derives from `CalibrationError`.

`RequestRefused` is the caller's mistake (the message names the bad argument): answer it, do not retry.
`StoreUnavailable` is the store's: SQLite could not read or write, and the same request may succeed later.
"""

from __future__ import annotations


class CalibrationError(Exception):
    """Base class of the calibration package's errors."""


class RequestRefused(CalibrationError):
    """A request the store refuses; the message names the bad argument."""


class UnknownEvent(RequestRefused):
    """A disposition for an event id the store holds no candidate for."""


class StoreUnavailable(CalibrationError):
    """The calibration store could not be opened, read or written (SQLite failed)."""
