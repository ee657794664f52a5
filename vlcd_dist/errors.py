"""Errors meant for the user: the message says what is wrong and what to do about it.

The CLI prints these without a traceback and exits with status 2.
"""


class VlcdError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class DataError(VlcdError):
    """Bad shards, manifests or data settings."""


class ConfigError(VlcdError, ValueError):
    """A recipe or an override cannot be applied; the message says how to fix it."""
