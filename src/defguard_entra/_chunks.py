"""Slicing work into batches: the one helper the Graph client and the orchestrator share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["chunked"]

T = TypeVar("T")


def chunked(values: Sequence[T], size: int) -> list[Sequence[T]]:
    """``values`` in slices of at most ``size``."""
    return [values[i : i + size] for i in range(0, len(values), size)]
