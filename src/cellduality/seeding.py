"""Deterministic, platform-independent randomness keyed by strings.

Python's ``hash()`` is salted per process and ``random``'s algorithms may change between versions, so
everything that must be reproducible (inpainting masks, RL cell selection, CellPuzzles batches) derives its
randomness from SHA-256 of its key parts, expanded with SplitMix64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

_MASK64 = (1 << 64) - 1
_SEP = "\x1f"  # unit separator: ("a", "bc") and ("ab", "c") hash differently


def stable_seed(*parts: object) -> int:
    """64-bit integer from SHA-256 of the parts (as ``str``)."""
    text = _SEP.join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def splitmix64(x: int) -> int:
    """One SplitMix64 output for state ``x`` (a bijection on 64-bit integers)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stable_uniform(*parts: object) -> float:
    """A float in [0, 1) determined by the parts."""
    return (stable_seed(*parts) >> 11) / float(1 << 53)


def stable_keys(n: int, *parts: object) -> list[int]:
    """``n`` pseudo-random 64-bit keys for positions ``0..n-1`` of the stream named by ``parts``."""
    base = stable_seed(*parts)
    return [splitmix64((base + i * 0x9E3779B97F4A7C15) & _MASK64) for i in range(n)]


def stable_permutation(n: int, *parts: object) -> list[int]:
    """A permutation of ``range(n)`` determined by the parts."""
    keys = stable_keys(n, *parts)
    return sorted(range(n), key=lambda i: (keys[i], i))


def stable_shuffle(items: Sequence[T], *parts: object) -> list[T]:
    """``items`` in an order determined by the parts."""
    return [items[i] for i in stable_permutation(len(items), *parts)]


def stable_sample(items: Sequence[T], k: int, *parts: object) -> list[T]:
    """``k`` items (all when ``k >= len``) chosen by the parts, in shuffled order."""
    return stable_shuffle(items, *parts)[: max(0, k)]
