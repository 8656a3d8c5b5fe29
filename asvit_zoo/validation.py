"""Checks of user-given settings, shared by the library's configs and entry points.

Each check raises ``ValueError`` with the setting's name, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Optional, Tuple

__all__ = ['SEED_MAX', 'SEED_RANGE', 'Range', 'check_fields', 'check_seed', 'field_type', 'is_count', 'offset_seed']

SEED_MAX = 2 ** 32 - 1  # the largest seed every generator we seed (torch, numpy) accepts
_KIND_WORDS = {bool: 'true or false', int: 'an integer', float: 'a finite number', str: 'a string'}


@dataclass(frozen=True)
class Range:
    """The numbers from ``low`` to ``high`` (None: no upper bound); an open end excludes its bound."""

    low: float
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        low = _number(self.low)
        if self.high is None:
            return f'{">" if self.low_open else ">="} {low}'
        return f'in {"(" if self.low_open else "["}{low}, {_number(self.high)}{")" if self.high_open else "]"}'


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f'{value:g}'


def field_type(hint: Any) -> Tuple[type, bool]:
    """(the type, whether None is allowed) of a field annotation ``X`` or ``Optional[X]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0], True) if args else (hint, False)


def _has_kind(value: Any, kind: type) -> bool:
    if kind is float:  # an int is a number too (JSON writes 1.0 as 1)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def is_count(value: Any) -> bool:
    """True for an int (not a bool) of at least 1."""
    return _has_kind(value, int) and value >= 1


SEED_RANGE = Range(0, SEED_MAX)


def check_seed(seed: Any) -> None:
    """Raise ``ValueError`` unless ``seed`` is an integer in :data:`SEED_RANGE`."""
    if not _has_kind(seed, int) or seed not in SEED_RANGE:
        raise ValueError(f'seed must be an integer {SEED_RANGE}, got {seed!r}')


def offset_seed(seed: int, offset: int) -> int:
    """``seed + offset`` wrapped into :data:`SEED_RANGE` (the seed of the ``offset``-th item of a run)."""
    return (seed + offset) % (SEED_MAX + 1)


def check_fields(config: Any) -> None:
    """Check every field of the dataclass instance ``config`` against its annotation (bool, int, float, str, or
    Optional of one) and against the :class:`Range` in its metadata under ``'range'``, if any."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind, optional = field_type(hints[f.name])
        if value is None and optional:
            continue
        unset = ' or unset' if optional else ''
        if not _has_kind(value, kind):
            raise ValueError(f'{f.name} must be {_KIND_WORDS[kind]}{unset}, got {value!r}')
        allowed = f.metadata.get('range')
        if allowed is not None and value not in allowed:
            raise ValueError(f'{f.name} must be {allowed}{unset}, got {value!r}')
