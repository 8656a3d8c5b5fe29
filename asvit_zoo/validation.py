"""Checks of user-given settings, shared by the library's configs and entry points.

Each check raises ``ValueError`` with the setting's name, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional, Tuple

import torch

__all__ = ['COUNT', 'NON_NEGATIVE', 'POSITIVE', 'SEED_MAX', 'SEED_RANGE', 'Range', 'changed_settings',
           'check_compile_backend', 'check_fields', 'check_seed', 'field_type', 'is_count', 'offset_seed',
           'plain_float', 'plain_int', 'setting']

SEED_MAX = 2 ** 32 - 1  # the largest seed every generator we seed (torch, numpy) accepts
_KIND_WORDS = {bool: 'true or false', int: 'an integer', float: 'a finite number', str: 'a string'}
_KINDS_WORDS = {bool: 'true/false values', int: 'integers', float: 'finite numbers', str: 'strings'}


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


COUNT, NON_NEGATIVE, POSITIVE = Range(1), Range(0), Range(0, low_open=True)
SEED_RANGE = Range(0, SEED_MAX)


def setting(default: Any = dataclasses.MISSING, help: str = '', allowed: Optional[Range] = None,
            why: str = '') -> Any:
    """A dataclass field that :func:`check_fields` checks: ``allowed`` is the range of its numbers (of each item,
    for a tuple), ``why`` a reason the error adds, ``help`` its text on the command line."""
    return field(default=default, metadata={'help': help, 'range': allowed, 'why': why})


def field_type(hint: Any) -> Tuple[type, bool]:
    """(the type, whether None is allowed) of a field annotation ``X`` or ``Optional[X]``."""
    if typing.get_origin(hint) is not typing.Union:
        return hint, False
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0], True


def _item_type(kind: Any) -> Optional[type]:
    """``X`` of the annotation ``Tuple[X, ...]``, else None."""
    args = typing.get_args(kind)
    return args[0] if typing.get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis else None


def _has_kind(value: Any, kind: type) -> bool:
    if kind is float:  # an int is a number too (JSON writes 1.0 as 1)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def is_count(value: Any) -> bool:
    """True for an int (not a bool) of at least 1."""
    return _has_kind(value, int) and value >= 1


def _check(name: str, value: Any, kind: Any, allowed: Optional[Range] = None, optional: bool = False,
           why: str = '') -> None:
    """Raise ``ValueError`` unless ``value`` is of ``kind`` (bool, int, float, str or ``Tuple[one of them, ...]``,
    non-empty) in ``allowed`` (each item, for a tuple), or None when ``optional``."""
    if value is None and optional:
        return
    item = _item_type(kind)
    if item is None:
        fits, wanted = _has_kind(value, kind) and (allowed is None or value in allowed), _KIND_WORDS[kind]
    else:
        fits = isinstance(value, (tuple, list)) and len(value) > 0 and all(
            _has_kind(v, item) and (allowed is None or v in allowed) for v in value)
        wanted = f'a non-empty list of {_KINDS_WORDS[item]}'
    if not fits:
        limits = f' {allowed}' if allowed is not None else ''
        unset = ' or unset' if optional else ''
        reason = f' ({why})' if why else ''
        raise ValueError(f'{name} must be {wanted}{limits}{unset}{reason}, got {value!r}')


# Plain ASCII decimal notation: int() and float() alone also take '1_6', '+8' and non-ASCII digits such as '٨'.
_PLAIN_INT = re.compile(r'-?[0-9]+')
_PLAIN_FLOAT = re.compile(r'-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?')


def plain_int(text: str) -> int:
    """The integer written in ``text`` (surrounding blanks allowed) in plain decimal digits, with an optional
    minus sign; ``ValueError`` for any other text."""
    if not _PLAIN_INT.fullmatch(text.strip()):
        raise ValueError(f'not a plain decimal integer: {text!r}')
    return int(text)


def plain_float(text: str) -> float:
    """The number written in ``text`` (surrounding blanks allowed) in plain decimal notation (``0.25``, ``.5``,
    ``1e-3``); ``ValueError`` for any other text, ``nan`` and ``inf`` included."""
    if not _PLAIN_FLOAT.fullmatch(text.strip()):
        raise ValueError(f'not a plain decimal number: {text!r}')
    return float(text)


def check_count(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1 (see :func:`is_count`)."""
    _check(name, value, int, COUNT)


def check_seed(seed: Any) -> None:
    """Raise ``ValueError`` unless ``seed`` is an integer in :data:`SEED_RANGE`."""
    _check('seed', seed, int, SEED_RANGE)


def check_compile_backend(backend: str, name: str = 'compile') -> None:
    """Raise ``ValueError`` unless ``backend`` is one of torch.compile's backends (debug ones included)."""
    if backend not in torch.compiler.list_backends(exclude_tags=()):
        raise ValueError(f'{name} must be a torch.compile backend ({", ".join(torch.compiler.list_backends())}, or '
                         f"a debug one such as 'eager' or 'aot_eager'), got {backend!r}")


def offset_seed(seed: int, offset: int) -> int:
    """``seed + offset`` wrapped into :data:`SEED_RANGE` (the seed of the ``offset``-th item of a run)."""
    return (seed + offset) % (SEED_MAX + 1)


def check_fields(config: Any) -> None:
    """Check every field of the dataclass instance ``config`` against its annotation (bool, int, float, str,
    ``Tuple[one of them, ...]``, or Optional of one) and its :func:`setting` metadata, in field order."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        kind, optional = field_type(hints[f.name])
        _check(f.name, getattr(config, f.name), kind, f.metadata.get('range'), optional, f.metadata.get('why', ''))


def changed_settings(saved: Mapping[str, Any], given: Any, keep: Iterable[str] = ()) -> List[str]:
    """``'NAME: saved A, given B'`` for each setting of the dataclass instance ``given`` whose value differs from
    the one in ``saved`` (a run's recorded config), compared as JSON; settings in ``keep`` may change. A setting
    that ``saved`` lacks (one added since the run was written) counts as its default: the behaviour it had."""
    def as_json(value: Any) -> Any:
        return json.loads(json.dumps(value))

    saved = as_json(dict(saved))
    defaults = as_json({f.name: f.default for f in dataclasses.fields(given) if f.default is not dataclasses.MISSING})
    expected = {**defaults, **saved}

    def recorded(name: str) -> str:
        if name in saved:
            return f'saved {saved[name]!r}'
        return f'not saved (default {defaults[name]!r})' if name in defaults else 'not saved'

    return [f'{name}: {recorded(name)}, given {value!r}' for name, value in as_json(dataclasses.asdict(given)).items()
            if name not in keep and expected.get(name, ...) != value]
