"""Typed settings objects built from one config section (unknown keys are one-line errors)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from cellduality.errors import CellDualityError

T = TypeVar("T")


def settings_from_config(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """``cls(**values)`` for a dataclass ``cls``, naming unknown keys of config section ``section``."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise CellDualityError(f"unknown {section} setting(s) {unknown}; known: {sorted(names)}")
    return cls(**dict(values))
