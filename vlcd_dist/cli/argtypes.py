"""argparse value types shared by every ``vlcd`` subcommand."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer of at least 1, or an argparse error that says so."""
    try:
        value = int(text)
    except ValueError as exn:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from exn
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
