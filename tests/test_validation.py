"""Shared checks of user-given settings: ranges, counts, seeds and dataclass fields."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import pytest

from asvit_zoo.validation import (COUNT, POSITIVE, SEED_MAX, Range, changed_settings, check_fields, check_seed,
                                  field_type, is_count, offset_seed, setting)


@pytest.mark.parametrize('allowed,inside,outside,text', [
    (Range(1), [1, 2.5, 10 ** 9], [0, 0.999, -1, math.nan], '>= 1'),
    (Range(0, low_open=True), [1e-12, 3], [0, -1e-12], '> 0'),
    (Range(0, 1), [0, 0.5, 1], [-0.1, 1.1], 'in [0, 1]'),
    (Range(0, 1, high_open=True), [0, 0.999], [1, 1.5], 'in [0, 1)'),
    (Range(0, 1, low_open=True), [1e-9, 1], [0], 'in (0, 1]'),
    (Range(0, SEED_MAX), [0, SEED_MAX], [-1, SEED_MAX + 1], 'in [0, 4294967295]'),
    (Range(0.5, 2.25), [0.5, 2.25], [0.49, 2.26], 'in [0.5, 2.25]'),
])
def test_range(allowed, inside, outside, text):
    assert all(v in allowed for v in inside) and not any(v in allowed for v in outside)
    assert str(allowed) == text


def test_is_count_and_check_seed():
    assert [is_count(v) for v in (1, 7, 0, -1, 1.0, True, '2', None)] == [True, True] + [False] * 6
    for seed in (0, SEED_MAX):
        check_seed(seed)
    for seed in (-1, SEED_MAX + 1, 1.0, True, '3'):
        with pytest.raises(ValueError, match=r'seed must be an integer in \[0, 4294967295\], got'):
            check_seed(seed)


def test_offset_seed_stays_in_range():
    assert offset_seed(5, 3) == 8 and offset_seed(SEED_MAX, 1) == 0 and offset_seed(SEED_MAX * 100_003, 7) <= SEED_MAX


def test_field_type():
    assert field_type(int) == (int, False) and field_type(Optional[float]) == (float, True)
    assert field_type(Tuple[int, ...]) == (Tuple[int, ...], False)


@dataclass
class _Settings:
    steps: int = field(default=1, metadata={'range': Range(1)})
    rate: float = field(default=0.5, metadata={'range': Range(0, 1)})
    name: str = 'x'
    flag: bool = False
    limit: Optional[float] = field(default=None, metadata={'range': Range(0, low_open=True)})
    sizes: Tuple[int, ...] = setting((1, 2), allowed=COUNT)
    names: Tuple[str, ...] = ('a',)
    batch: int = setting(2, allowed=Range(2), why='pairs')
    budget: Optional[float] = setting(None, allowed=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)


@pytest.mark.parametrize('values,message', [
    (dict(steps=True), 'steps must be an integer >= 1, got True'),
    (dict(steps=2.0), 'steps must be an integer >= 1, got 2.0'),
    (dict(steps=0), 'steps must be an integer >= 1, got 0'),
    (dict(rate='0.5'), r"rate must be a finite number in \[0, 1\], got '0.5'"),
    (dict(rate=math.inf), r'rate must be a finite number in \[0, 1\], got inf'),
    (dict(rate=2), r'rate must be a finite number in \[0, 1\], got 2'),
    (dict(name=None), 'name must be a string, got None'),
    (dict(flag=1), 'flag must be true or false, got 1'),
    (dict(limit=0), 'limit must be a finite number > 0 or unset, got 0'),
    (dict(limit='1'), "limit must be a finite number > 0 or unset, got '1'"),
    (dict(sizes=()), r'sizes must be a non-empty list of integers >= 1, got \(\)'),
    (dict(sizes=(1, 0)), r'sizes must be a non-empty list of integers >= 1, got \(1, 0\)'),
    (dict(sizes=(1, 2.0)), r'sizes must be a non-empty list of integers >= 1, got \(1, 2.0\)'),
    (dict(sizes=3), 'sizes must be a non-empty list of integers >= 1, got 3'),
    (dict(names='ab'), "names must be a non-empty list of strings, got 'ab'"),
    (dict(names=['a', 1]), r"names must be a non-empty list of strings, got \['a', 1\]"),
    (dict(batch=1), r'batch must be an integer >= 2 \(pairs\), got 1'),
    (dict(budget=-2.5), 'budget must be a finite number > 0 or unset, got -2.5'),
])
def test_check_fields_names_the_field_the_value_and_what_is_allowed(values, message):
    with pytest.raises(ValueError, match=f'^{message}$'):
        _Settings(**values)


def test_check_fields_accepts_valid_values():
    s = _Settings(steps=3, rate=1, name='y', flag=True, limit=2.5, sizes=[4], names=('p', 'q'), budget=7)
    assert (s.steps, s.rate, s.limit, s.sizes, s.budget) == (3, 1, 2.5, [4], 7)  # an int is a number too
    assert _Settings(limit=None).limit is None


def test_changed_settings_names_each_difference():
    @dataclass(frozen=True)
    class Run:
        steps: int = 10
        sizes: Tuple[int, ...] = (1, 2)
        device: str = 'cpu'
        added: Optional[float] = None

    saved = {'steps': 5, 'sizes': [1, 2], 'device': 'cuda'}  # as a JSON file holds it: a list for the tuple
    assert changed_settings(saved, Run()) == ["steps: saved 5, given 10", "device: saved 'cuda', given 'cpu'"]
    # a setting added since the run was saved is its default there: a change only at another value
    assert changed_settings(saved, Run(steps=5, device='cuda', added=0.5)) == [
        'added: not saved (default None), given 0.5']
    assert changed_settings(saved, Run(steps=5, device='cuda', sizes=(1, 2), added=0.5), keep=('added',)) == []
    assert changed_settings({**saved, 'added': None}, Run(steps=5, sizes=(2, 1), device='cuda')) == [
        'sizes: saved [1, 2], given [2, 1]']
