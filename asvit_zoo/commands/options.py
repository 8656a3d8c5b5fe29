"""Option values shared by the subcommands: counts such as ``30M`` and positive numbers."""
from __future__ import annotations

import math
import re

__all__ = ['device_help', 'parse_count', 'parse_positive']

_COUNT = re.compile(r'^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgKMG]?)\s*$')
_SUFFIXES = {'': 1, 'k': 10 ** 3, 'm': 10 ** 6, 'g': 10 ** 9}


def device_help(default: str = 'cpu') -> str:
    """The help text of a --device option, the same in every command."""
    return f'cpu, cuda or cuda:N (default: {default})'


def parse_count(text: str, option: str) -> int:
    """A positive count such as '30M', '1.5G', '250k' or '30000000'."""
    match = _COUNT.match(text)
    value = float(match.group(1)) * _SUFFIXES[match.group(2).lower()] if match else math.nan
    if not (math.isfinite(value) and value >= 1):
        raise ValueError(f'{option} must be a positive count such as 30M, 1.5G or 250000, got {text!r}')
    return round(value)


def parse_positive(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f'{option} must be a positive number, got {text!r}')
    return value
