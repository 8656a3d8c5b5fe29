"""As-ViT genotypes: the topology strings of the paper and their search space.

Two string forms (see the spec, section 1):

* seed:   ``K1,S1,E1|K2,S2,E2|K3,S3,E3|K4,S4,E4|H``
* scaled: ``K1,S1,E1,L1|K2,S2,E2,L2|K3,S3,E3,L3|K4,S4,E4,L4|H,C``

K is a stage's tokenizer kernel, S its attention split (S x S windows), E its FFN expansion, L its
depth, H the number of heads of stage 4 (stages use H/8, H/4, H/2, H) and C the stage-1 width.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Mapping, Sequence

from .validation import is_count, plain_int

__all__ = ['NUM_STAGES', 'MAX_WIDTH', 'SEARCH_SPACE', 'PAPER_SEED', 'PAPER_LARGE', 'Genotype']

# Published by the authors (code README): the seed their search found, and As-ViT Large.
PAPER_SEED = '8,2,3|4,1,2|4,1,4|4,1,6|32'
PAPER_LARGE = '8,2,3,5|4,1,2,2|4,1,4,5|4,1,6,2|32,180'

NUM_STAGES = 4
MAX_WIDTH = 1024  # stage widths are capped at this many channels (code)

# The free decisions of the seed search, in the authors' order, with their allowed values (S4 is fixed).
SEARCH_SPACE: Mapping[str, tuple[int, ...]] = {
    'kernel1': (4, 5, 6, 7, 8),
    'kernel2': (2, 3, 4),
    'kernel3': (2, 3, 4),
    'kernel4': (2, 3, 4),
    'split1': (2, 4, 8),
    'split2': (1, 2, 4),
    'split3': (1, 2),
    'expansion1': (2, 3, 4, 5, 6),
    'expansion2': (2, 3, 4, 5, 6),
    'expansion3': (2, 3, 4, 5, 6),
    'expansion4': (2, 3, 4, 5, 6),
    'heads': (16, 32, 64),
}
SPLIT4 = 1  # stage 4 always attends globally
HEAD_DIVISORS = (8, 4, 2, 1)  # stage i uses heads // HEAD_DIVISORS[i]

Stages = tuple[int, int, int, int]


def _allowed(name: str) -> str:
    return '{' + ', '.join(str(v) for v in SEARCH_SPACE[name]) + '}'


def _parse_int(field: str, token: str, text: str) -> int:
    try:
        return plain_int(token)
    except ValueError:
        raise ValueError(f'genotype {text!r}: {field} must be an integer, got {token.strip()!r}') from None


@dataclass(frozen=True)
class Genotype:
    """One As-ViT topology. ``depths`` and ``embed_dim`` are both ``None`` for a seed genotype."""

    kernels: Stages
    splits: Stages
    expansions: Stages
    heads: int
    depths: Stages | None = None
    embed_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ('kernels', 'splits', 'expansions', 'depths'):
            value = getattr(self, name)
            if value is None and name == 'depths':
                continue
            if not isinstance(value, Sequence) or len(value) != NUM_STAGES:
                raise ValueError(f'{name} must have {NUM_STAGES} values (one per stage), got {value!r}')
            object.__setattr__(self, name, tuple(value))
            for i, v in enumerate(value):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f'{name}[{i}] (stage {i + 1}) must be an integer, got {v!r}')
        if (self.depths is None) != (self.embed_dim is None):
            raise ValueError(
                f'depths and embed_dim go together: both set (scaled genotype) or both None (seed), '
                f'got depths={self.depths!r}, embed_dim={self.embed_dim!r}')
        self._validate()

    # ---------------------------------------------------------------- validation
    def _validate(self) -> None:
        for i in range(NUM_STAGES):
            self._check_choice(f'kernel{i + 1}', f'K{i + 1}', self.kernels[i])
        for i in range(NUM_STAGES - 1):
            self._check_choice(f'split{i + 1}', f'S{i + 1}', self.splits[i])
        if self.splits[3] != SPLIT4:
            raise ValueError(f'S4 (attention split of stage 4) must be {SPLIT4} (global attention), '
                             f'got {self.splits[3]}')
        for i in range(NUM_STAGES):
            self._check_choice(f'expansion{i + 1}', f'E{i + 1}', self.expansions[i])
        if isinstance(self.heads, bool) or not isinstance(self.heads, int):
            raise ValueError(f'H (heads of stage 4) must be an integer, got {self.heads!r}')
        if self.heads <= 0 or self.heads % HEAD_DIVISORS[0]:
            raise ValueError(f'H (heads of stage 4) must be a positive multiple of 8 (stages use H/8, H/4, '
                             f'H/2, H heads), got {self.heads}; allowed: {_allowed("heads")}')
        self._check_choice('heads', 'H', self.heads)
        if self.depths is not None:
            for i, depth in enumerate(self.depths):
                if depth < 1:
                    raise ValueError(f'L{i + 1} (depth of stage {i + 1}) must be >= 1, got {depth}')
            self.check_width(self.embed_dim)

    @staticmethod
    def _check_choice(space_name: str, field: str, value: int) -> None:
        if value not in SEARCH_SPACE[space_name]:
            raise ValueError(f'{field} = {value} is outside the search space; allowed: {_allowed(space_name)}')

    def check_width(self, embed_dim: int) -> None:
        """Raise ``ValueError`` unless every stage of width ``embed_dim`` has at least one channel per head."""
        if not is_count(embed_dim) or embed_dim > MAX_WIDTH:
            raise ValueError(f'C (embedding width of stage 1) must be an integer in [1, {MAX_WIDTH}] (every stage '
                             f'width is capped at {MAX_WIDTH} channels), got {embed_dim!r}')
        for i, (width, heads) in enumerate(zip(self.stage_widths(embed_dim), self.stage_heads())):
            if width < heads:
                raise ValueError(f'C = {embed_dim} is too narrow for H = {self.heads}: stage {i + 1} has {width} '
                                 f'channels for {heads} heads (need C >= {self.heads // HEAD_DIVISORS[0]})')

    # ---------------------------------------------------------------- parsing / formatting
    @classmethod
    def parse(cls, text: str) -> Genotype:
        """Parse a seed or scaled genotype string."""
        if not isinstance(text, str):
            raise ValueError(f'a genotype must be a string, got {text!r} ({type(text).__name__})')
        parts = text.strip().split('|')
        if len(parts) != NUM_STAGES + 1:
            raise ValueError(f'genotype {text!r}: expected {NUM_STAGES} stages and a head part separated by "|" '
                             f'({NUM_STAGES + 1} parts), got {len(parts)}')
        stages = [[_parse_int(f'stage {i + 1} field {j + 1}', tok, text) for j, tok in enumerate(part.split(','))]
                  for i, part in enumerate(parts[:NUM_STAGES])]
        head = [_parse_int(f'head field {j + 1}', tok, text) for j, tok in enumerate(parts[-1].split(','))]
        widths = {len(s) for s in stages}
        if len(widths) != 1 or widths.pop() not in (3, 4):
            raise ValueError(f'genotype {text!r}: every stage needs 3 values K,S,E (seed form) or 4 values K,S,E,L '
                             f'(scaled form), got {[len(s) for s in stages]}')
        scaled = len(stages[0]) == 4
        if len(head) != (2 if scaled else 1):
            form, want = ('scaled', 'H,C') if scaled else ('seed', 'H')
            raise ValueError(f'genotype {text!r}: the {form} form ends in "{want}", got {parts[-1]!r}')
        cols = list(zip(*stages))
        return cls(
            kernels=cols[0], splits=cols[1], expansions=cols[2], heads=head[0],
            depths=cols[3] if scaled else None, embed_dim=head[1] if scaled else None)

    def __str__(self) -> str:
        if self.is_seed:
            stages = [f'{k},{s},{e}' for k, s, e in zip(self.kernels, self.splits, self.expansions)]
            return '|'.join(stages + [str(self.heads)])
        stages = [f'{k},{s},{e},{d}' for k, s, e, d in zip(self.kernels, self.splits, self.expansions, self.depths)]
        return '|'.join(stages + [f'{self.heads},{self.embed_dim}'])

    # ---------------------------------------------------------------- derived structure
    @property
    def is_seed(self) -> bool:
        return self.depths is None

    def scaled(self, depths: Sequence[int], embed_dim: int) -> Genotype:
        """This topology with the given per-stage depths and stage-1 width."""
        return dataclasses.replace(self, depths=tuple(depths), embed_dim=embed_dim)

    def seed(self) -> Genotype:
        """The seed topology (depths and width dropped)."""
        return dataclasses.replace(self, depths=None, embed_dim=None)

    def stage_widths(self, embed_dim: int | None = None) -> Stages:
        c = self.embed_dim if embed_dim is None else embed_dim
        if c is None:
            raise ValueError(f'seed genotype {self}: give embed_dim to know the stage widths')
        return tuple(min(MAX_WIDTH, c * 2 ** i) for i in range(NUM_STAGES))  # type: ignore[return-value]

    def stage_heads(self) -> Stages:
        return tuple(self.heads // d for d in HEAD_DIVISORS)  # type: ignore[return-value]

    # ---------------------------------------------------------------- search-space coordinates
    def decisions(self) -> tuple[int, ...]:
        """Index of each of the 12 free decisions in :data:`SEARCH_SPACE` (S4 is fixed)."""
        values = (*self.kernels, *self.splits[:3], *self.expansions, self.heads)
        return tuple(SEARCH_SPACE[name].index(v) for name, v in zip(SEARCH_SPACE, values))

    @classmethod
    def from_decisions(cls, indices: Sequence[int]) -> Genotype:
        """The seed genotype with the given choice index for each decision of :data:`SEARCH_SPACE`."""
        if len(indices) != len(SEARCH_SPACE):
            raise ValueError(f'expected {len(SEARCH_SPACE)} decisions, got {len(indices)}')
        values = []
        for (name, choices), i in zip(SEARCH_SPACE.items(), indices):
            try:
                index = operator.index(i)
            except TypeError:
                raise ValueError(f'decision {name}: index must be an integer, got {i!r}') from None
            if not 0 <= index < len(choices):
                raise ValueError(f'decision {name}: index {i} out of range 0..{len(choices) - 1}')
            values.append(choices[index])
        return cls(kernels=tuple(values[0:4]), splits=(*values[4:7], SPLIT4),
                   expansions=tuple(values[7:11]), heads=values[11])
