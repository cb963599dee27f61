"""Errors raised by the local engine.

Every error a person can cause or meet (bad parameter, bad image, missing model, cancel,
out-of-memory) is a :class:`PipelineError` whose ``str()`` is a complete, plain-language
message fit to show as is. Anything else escaping the engine is a bug.

    PipelineError
    ├── ParamsError       one or more parameters are invalid (carries FieldError items)
    ├── ImageError        an input image cannot be read, or an output cannot be written
    │   └── OutputTooLarge  the requested output would pass the output cap
    ├── ModelError        a model file is missing, corrupt or of an unsupported kind
    ├── OutOfMemory       the device ran out of memory
    └── Cancelled         the job was cancelled between two tiles or steps
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Cancelled",
    "FieldError",
    "ImageError",
    "ModelError",
    "OutOfMemory",
    "OutputTooLarge",
    "ParamsError",
    "PipelineError",
]


class PipelineError(Exception):
    """Base of every error the engine raises on purpose; ``str(err)`` is user-facing."""


@dataclass(frozen=True)
class FieldError:
    """One invalid parameter: which field, the value given and what is allowed."""

    field: str
    value: object
    allowed: str

    def __str__(self) -> str:
        return f"{self.field} = {self.value!r} is not allowed: {self.allowed}"


class ParamsError(PipelineError, ValueError):
    """One or more parameters are invalid. ``errors`` lists every offending field."""

    def __init__(self, errors: list[FieldError] | FieldError) -> None:
        self.errors = [errors] if isinstance(errors, FieldError) else list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    @property
    def fields(self) -> list[str]:
        return [e.field for e in self.errors]


class ImageError(PipelineError):
    """An image cannot be read or written. ``path`` names the file when there is one."""

    def __init__(self, message: str, path: object = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class OutputTooLarge(ImageError):
    """The output size the parameters ask for would pass the configured output cap."""


class ModelError(PipelineError):
    """A model file is missing, corrupt, unsafe to load, or of an unsupported architecture."""


class OutOfMemory(PipelineError):
    """The device ran out of memory; the message says what to lower."""


class Cancelled(PipelineError):
    """The job was cancelled; raised between tiles or steps."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)
