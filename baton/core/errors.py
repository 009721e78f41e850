"""Errors raised by baton. Validation errors name the offending field."""

from __future__ import annotations


class BatonError(Exception):
    """Base class of every error baton raises on purpose."""


class ValidationError(BatonError, ValueError):
    """Bad input from a user: ``field`` names what was wrong."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ModelError(BatonError):
    """A model that cannot be found, loaded or served."""


class HandoffMismatch(BatonError):
    """A KV handoff that does not fit the decode batch that was asked to take it."""


class CapacityError(BatonError):
    """A decode batch has no room (rows or KV columns) for a handoff right now."""
