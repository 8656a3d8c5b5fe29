"""Genotype strings: round trips over the whole search space, the published strings, and the errors.

Every error test checks that the message names the field, the offending value and what is allowed.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence, Tuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from asvit_zoo import resolve_genotype
from asvit_zoo.genotype import SEARCH_SPACE, Genotype

SEED = '8,2,3|4,1,2|4,1,4|4,1,6|32'
LARGE = '8,2,3,5|4,1,2,2|4,1,4,5|4,1,6,2|32,180'
MAX_DEPTH = 30
MAX_EMBED_DIM = 1024  # MAX_WIDTH: every stage width is capped there

# The spec's field letters, in the order of a stage's values and of the head's values.
STAGE_COLUMNS = 'KSEL'
HEAD_COLUMNS = 'HC'
# The fields with a choice in SEARCH_SPACE, and the search-space entry of each.
CHOICE_FIELDS: Dict[str, str] = {
    **{f'K{i}': f'kernel{i}' for i in range(1, 5)},
    **{f'S{i}': f'split{i}' for i in range(1, 4)},
    **{f'E{i}': f'expansion{i}' for i in range(1, 5)},
    'H': 'heads',
}

StageValues = Tuple[int, ...]  # one value per stage
SeedValues = Tuple[StageValues, StageValues, StageValues, int]  # kernels, splits, expansions, heads
ScaledValues = Tuple[StageValues, StageValues, StageValues, int, StageValues, int]  # ... depths, embed_dim


# --------------------------------------------------------------------------- helpers
def genotype_string(stages: Sequence[Sequence[object]], head: Sequence[object]) -> str:
    """Write the string by hand (independently of ``Genotype.__str__``)."""
    return '|'.join([','.join(map(str, stage)) for stage in stages] + [','.join(map(str, head))])


def with_field(text: str, field: str, token: object) -> str:
    """``text`` with one field (``K1``..``L4``, ``H``, ``C``) replaced by ``token``."""
    *stages, head = [part.split(',') for part in text.split('|')]
    if field in HEAD_COLUMNS:
        head[HEAD_COLUMNS.index(field)] = str(token)
    else:
        stages[int(field[1:]) - 1][STAGE_COLUMNS.index(field[0])] = str(token)
    return genotype_string(stages, head)


def names(field: str, value: object, allowed: str) -> str:
    """A pattern for a message naming ``field``, ``value`` (``= v`` or ``got v``) and ``allowed``, in any order."""
    return (rf'^(?=.*\b{re.escape(field)}\b)(?=.*(= |got ){re.escape(str(value))}(?![\w.]))'
            rf'(?=.*{re.escape(allowed)})')


def allowed_set(field: str) -> str:
    return '{' + ', '.join(map(str, SEARCH_SPACE[CHOICE_FIELDS[field]])) + '}'


# --------------------------------------------------------------------------- strategies
def choice(field: str) -> st.SearchStrategy[int]:
    return st.sampled_from(SEARCH_SPACE[CHOICE_FIELDS[field]])


def stage_values(letter: str, count: int = 4) -> st.SearchStrategy[StageValues]:
    return st.tuples(*(choice(f'{letter}{i}') for i in range(1, count + 1)))


# Any seed genotype of the search space, as the raw values (kernels, splits, expansions, heads).
seed_values = st.tuples(
    stage_values('K'), stage_values('S', 3).map(lambda s: (*s, 1)), stage_values('E'), choice('H'))
depths = st.tuples(*[st.integers(1, MAX_DEPTH)] * 4)


@st.composite
def scaled_values(draw: st.DrawFn) -> ScaledValues:
    kernels, splits, expansions, heads = draw(seed_values)
    embed_dim = draw(st.integers(heads // 8, MAX_EMBED_DIM))
    return kernels, splits, expansions, heads, draw(depths), embed_dim


def seed_genotype(values: SeedValues) -> Genotype:
    kernels, splits, expansions, heads = values
    return Genotype(kernels=kernels, splits=splits, expansions=expansions, heads=heads)


decision_indices = st.tuples(*(st.integers(0, len(choices) - 1) for choices in SEARCH_SPACE.values()))


# --------------------------------------------------------------------------- round trips
@settings(max_examples=300)
@given(seed_values)
def test_seed_string_round_trip(values: SeedValues) -> None:
    kernels, splits, expansions, heads = values
    text = genotype_string(list(zip(kernels, splits, expansions)), [heads])
    g = Genotype.parse(text)
    assert (g.kernels, g.splits, g.expansions, g.heads) == values
    assert g.is_seed and g.depths is None and g.embed_dim is None
    assert str(g) == text
    assert Genotype.parse(str(g)) == g
    assert g == seed_genotype(values)


@settings(max_examples=300)
@given(scaled_values())
def test_scaled_string_round_trip(values: ScaledValues) -> None:
    kernels, splits, expansions, heads, stage_depths, embed_dim = values
    text = genotype_string(list(zip(kernels, splits, expansions, stage_depths)), [heads, embed_dim])
    g = Genotype.parse(text)
    assert (g.kernels, g.splits, g.expansions, g.heads, g.depths, g.embed_dim) == values
    assert not g.is_seed
    assert str(g) == text
    assert Genotype.parse(str(g)) == g


@given(seed_values)
def test_decisions_round_trip(values: SeedValues) -> None:
    g = seed_genotype(values)
    decisions = g.decisions()
    assert len(decisions) == len(SEARCH_SPACE)
    assert Genotype.from_decisions(decisions) == g


@given(decision_indices)
def test_from_decisions_covers_every_index(indices: Tuple[int, ...]) -> None:
    g = Genotype.from_decisions(indices)
    assert g.is_seed and g.splits[3] == 1
    assert g.decisions() == indices


@given(seed_values, depths, st.data())
def test_scaled_and_seed_round_trip(values: SeedValues, stage_depths: StageValues,
                                    data: st.DataObject) -> None:
    g = seed_genotype(values)
    embed_dim = data.draw(st.integers(g.heads // 8, MAX_EMBED_DIM))
    big = g.scaled(list(stage_depths), embed_dim)
    assert (big.depths, big.embed_dim) == (stage_depths, embed_dim)
    assert big.seed() == g
    assert big.seed().scaled(stage_depths, embed_dim) == big
    assert big.decisions() == g.decisions()
    assert g.seed() == g


@pytest.mark.parametrize('field', sorted(CHOICE_FIELDS))
def test_every_choice_of_every_field_parses(field: str) -> None:
    for value in SEARCH_SPACE[CHOICE_FIELDS[field]]:
        text = with_field(SEED, field, value)
        assert str(Genotype.parse(text)) == text


# --------------------------------------------------------------------------- published strings
def test_published_seed_parses() -> None:
    g = Genotype.parse(SEED)
    assert g == Genotype(kernels=(8, 4, 4, 4), splits=(2, 1, 1, 1), expansions=(3, 2, 4, 6), heads=32)
    assert g.is_seed
    assert g.stage_heads() == (4, 8, 16, 32)
    assert str(g) == SEED


def test_published_large_parses() -> None:
    g = Genotype.parse(LARGE)
    assert (g.depths, g.embed_dim) == ((5, 2, 5, 2), 180)
    assert g.seed() == Genotype.parse(SEED)
    assert g.stage_widths() == (180, 360, 720, 1024)  # capped at 1024 channels
    assert str(g) == LARGE


# --------------------------------------------------------------------------- errors: structure
@pytest.mark.parametrize('text, count', [
    ('8,2,3|4,1,2|4,1,4|32', 4),
    ('8,2,3|4,1,2|4,1,4|4,1,6|4,1,6|32', 6),
    ('8,2,3|4,1,2|4,1,4|4,1,6|32|', 6),
    ('', 1),
])
def test_wrong_stage_count(text: str, count: int) -> None:
    with pytest.raises(ValueError, match=rf'expected 4 stages and a head part .*\(5 parts\), got {count}$'):
        Genotype.parse(text)


@pytest.mark.parametrize('token', ['x', '3.0', '', '1_6', '\u0663'])  # U+0663: ARABIC-INDIC DIGIT THREE
@pytest.mark.parametrize('field, place', [('E1', 'stage 1 field 3'), ('L4', 'stage 4 field 4'),
                                          ('H', 'head field 1'), ('C', 'head field 2')])
def test_non_integer_field(field: str, place: str, token: str) -> None:
    with pytest.raises(ValueError, match=rf'{place} must be an integer, got {re.escape(repr(token))}'):
        Genotype.parse(with_field(LARGE, field, token))


@pytest.mark.parametrize('text, got', [
    ('8,2,3|4,1,2,1|4,1,4|4,1,6|32', '[3, 4, 3, 3]'),
    ('8,2,3,1|4,1,2,1|4,1,4,1|4,1,6|32,32', '[4, 4, 4, 3]'),
    ('8,2|4,1|4,1|4,1|32', '[2, 2, 2, 2]'),
    ('8,2,3,1,1|4,1,2,1,1|4,1,4,1,1|4,1,6,1,1|32,32', '[5, 5, 5, 5]'),
])
def test_stage_value_count_mixed_or_wrong(text: str, got: str) -> None:
    with pytest.raises(ValueError, match=r'3 values K,S,E \(seed form\) or 4 values K,S,E,L \(scaled form\), '
                                         rf'got {re.escape(got)}'):
        Genotype.parse(text)


def test_seed_form_with_scaled_head() -> None:
    with pytest.raises(ValueError, match=r'''the seed form ends in "H", got '32,180\''''):
        Genotype.parse('8,2,3|4,1,2|4,1,4|4,1,6|32,180')


def test_scaled_form_without_width() -> None:
    with pytest.raises(ValueError, match=r'''the scaled form ends in "H,C", got '32\''''):
        Genotype.parse('8,2,3,5|4,1,2,2|4,1,4,5|4,1,6,2|32')


@pytest.mark.parametrize('value', [123, None, SEED.encode(), [SEED]])
def test_non_string_input(value: Any) -> None:
    with pytest.raises(ValueError, match=rf'a genotype must be a string, got {re.escape(repr(value))} '
                                         rf'\({type(value).__name__}\)'):
        Genotype.parse(value)


# --------------------------------------------------------------------------- errors: values
@pytest.mark.parametrize('field, value', [
    ('K1', 3), ('K1', 9), ('K2', 1), ('K3', 5), ('K4', 8),
    ('S1', 1), ('S1', 3), ('S2', 8), ('S3', 4),
    ('E1', 1), ('E2', 7), ('E3', 0), ('E4', -2),
    ('H', 8), ('H', 24), ('H', 128),
])
def test_out_of_space_value(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=names(field, value, f'outside the search space; allowed: '
                                                             f'{allowed_set(field)}')):
        Genotype.parse(with_field(SEED, field, value))


@given(st.sampled_from(sorted(CHOICE_FIELDS)), st.integers(-1000, 1000), st.sampled_from([SEED, LARGE]))
def test_any_out_of_space_value_is_named(field: str, value: int, base: str) -> None:
    assume(value not in SEARCH_SPACE[CHOICE_FIELDS[field]])
    with pytest.raises(ValueError, match=names(field, value, f'allowed: {allowed_set(field)}')):
        Genotype.parse(with_field(base, field, value))


@pytest.mark.parametrize('value', [0, 2, 4, -1])
def test_split4_must_be_global(value: int) -> None:
    with pytest.raises(ValueError, match=names('S4', value, 'must be 1 (global attention)')):
        Genotype.parse(with_field(SEED, 'S4', value))


@pytest.mark.parametrize('value', [4, 12, 20, 33, 0, -16])
def test_heads_not_positive_multiple_of_8(value: int) -> None:
    with pytest.raises(ValueError, match=names('H', value, 'allowed: {16, 32, 64}')) as info:
        Genotype.parse(with_field(SEED, 'H', value))
    assert 'must be a positive multiple of 8' in str(info.value)


@pytest.mark.parametrize('field', ['L1', 'L2', 'L3', 'L4'])
@pytest.mark.parametrize('value', [0, -1, -30])
def test_depth_not_positive(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=names(field, value, f'(depth of stage {field[1]}) must be >= 1')):
        Genotype.parse(with_field(LARGE, field, value))


WIDTH_RULE = (r'C \(embedding width of stage 1\) must be an integer in \[1, 1024\] \(every stage width is capped at '
              r'1024 channels\)')


@pytest.mark.parametrize('value', [0, -32, 1025, 5000])
def test_width_outside_its_range(value: int) -> None:
    with pytest.raises(ValueError, match=rf'{WIDTH_RULE}, got {value}$'):
        Genotype.parse(with_field(LARGE, 'C', value))
    assert Genotype.parse(with_field(LARGE, 'C', 1024)).stage_widths() == (1024,) * 4


@pytest.mark.parametrize('embed_dim', [32.7, '32', True])
def test_a_width_that_is_not_an_integer_is_refused_not_truncated(embed_dim: object) -> None:
    message = rf'{WIDTH_RULE}, got {re.escape(repr(embed_dim))}$'
    with pytest.raises(ValueError, match=message):
        resolve_genotype(SEED, embed_dim)
    with pytest.raises(ValueError, match=message):
        Genotype.parse(SEED).check_width(embed_dim)


@given(seed_values, st.data())
def test_width_too_narrow_for_heads(values: SeedValues, data: st.DataObject) -> None:
    g = seed_genotype(values)
    embed_dim = data.draw(st.integers(1, g.heads // 8 - 1))
    message = rf'C = {embed_dim} is too narrow for H = {g.heads}: .* \(need C >= {g.heads // 8}\)'
    with pytest.raises(ValueError, match=message):
        Genotype.parse(genotype_string(
            list(zip(g.kernels, g.splits, g.expansions, (1, 1, 1, 1))), [g.heads, embed_dim]))
    with pytest.raises(ValueError, match=message):
        g.scaled((1, 1, 1, 1), embed_dim)


# --------------------------------------------------------------------------- errors: constructor, decisions
SEED_FIELDS: Dict[str, Any] = dict(kernels=(8, 4, 4, 4), splits=(2, 1, 1, 1), expansions=(3, 2, 4, 6), heads=32)


@pytest.mark.parametrize('changes, message', [
    (dict(kernels=None), r'kernels must have 4 values \(one per stage\), got None'),
    (dict(splits=(2, 1, 1)), r'splits must have 4 values \(one per stage\), got \(2, 1, 1\)'),
    (dict(expansions=(3, 2, 4.0, 6)), r'expansions\[2\] \(stage 3\) must be an integer, got 4\.0'),
    (dict(heads=32.0), r'H \(heads of stage 4\) must be an integer, got 32\.0'),
    (dict(depths=(1, 1, 1, 1)), r'depths and embed_dim go together: .* got depths=\(1, 1, 1, 1\), embed_dim=None'),
    (dict(depths=(1, 1, 1, True), embed_dim=32), r'depths\[3\] \(stage 4\) must be an integer, got True'),
    (dict(depths=(1, 1, 1, 1), embed_dim=32.0), rf'{WIDTH_RULE}, got 32\.0'),
])
def test_constructor_errors(changes: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Genotype(**{**SEED_FIELDS, **changes})


@pytest.mark.parametrize('indices, message', [
    ([0] * 11, r'expected 12 decisions, got 11'),
    ([5] + [0] * 11, r'decision kernel1: index 5 out of range 0\.\.4'),
    ([0] * 11 + [-1], r'decision heads: index -1 out of range 0\.\.2'),
    ([1.7] + [0] * 11, r'decision kernel1: index must be an integer, got 1\.7'),
    (['1'] + [0] * 11, r"decision kernel1: index must be an integer, got '1'"),
])
def test_from_decisions_errors(indices: List[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Genotype.from_decisions(indices)
