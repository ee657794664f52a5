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


def non_negative_float(text: str) -> float:
    """A number of at least 0, or an argparse error that says so."""
    try:
        value = float(text)
    except ValueError as exn:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exn
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def degrade_overrides(value: str | None) -> list[str]:
    """The recipe overrides of ``--degrade [CORRUPTIONS]`` (None: the flag was not given; "":
    the recipe's corruptions; "a,b": those)."""
    if value is None:
        return []
    sets = ["eval.degrade.enabled=true"]
    names = [c.strip() for c in value.split(",") if c.strip()]
    if names:
        sets.append(f"eval.degrade.corruptions=[{', '.join(names)}]")
    return sets
