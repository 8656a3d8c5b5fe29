"""Progressive re-tokenization (spec section 6): training starts on coarse tokens and ends on the full grid.

A schedule is data: a list of phases, each a fraction of training and the stage-1 tokenizer's stride and
dilation for that fraction (:meth:`AsViT.set_tokenizer`; no weight changes). It is written as
``fraction:stride:dilation`` items separated by commas, e.g. ``0.5:8:2,0.25:6:1,0.25:4:1``, or by the
name of a shipped schedule (:data:`SCHEDULES`); the command line and recipes take these strings. From
Python, :func:`parse_schedule` also takes a list of phases (``[[0.5, 8, 2], ...]`` or
``[{"fraction": 0.5, "stride": 8, "dilation": 2}, ...]``).

Phase ``i`` runs the training steps from ``ceil(start_i * N)`` to ``ceil(end_i * N)`` of ``N``; a run too
short to give every phase a step is refused (:meth:`RetokenizationSchedule.check_steps`).

:func:`schedule_cost` is the exact compute account: the multiply-accumulates of one image's forward
pass at each phase's setting, counted with torch's FlopCounterMode (:func:`asvit_zoo.cost.count_macs`),
and the schedule's training compute relative to full-token training,
``sum(fraction_i * macs_i) / macs_full``. The backward pass of every layer costs a fixed multiple of its
forward pass, except the stage-1 tokenizer's, which computes no gradient for the image, so the ratio of
forward plus backward is close to this one, not equal.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple, Union


from .asvit import STEM_STRIDE, AsViT
from .cost import check_input_size, count_macs
from .fileio import new_figure, save_figure
from .validation import is_count, plain_float, plain_int

__all__ = [
    'FULL_TOKENS', 'SCHEDULES', 'Phase', 'RetokenizationSchedule', 'ScheduleCost', 'parse_schedule',
    'format_tokenizer', 'parse_tokenizer', 'schedule_cost', 'plot_schedule',
]

FULL_TOKENS = (STEM_STRIDE, 1)  # (stride, dilation) of the model as built: the full token grid

# Shipped schedules. 'short': for runs of a few epochs (the Fashion-MNIST benchmark): a third of the steps on full
# tokens after an 8:2 phase, 41% fewer MACs than full tokens on the benchmark's model (docs/retokenization.md).
# 'paper': three phases from coarse to full tokens in the spirit of the paper (stride 16 then 8 with dilation 2,
# then full tokens); the paper does not publish its exact phase lengths, these fractions are ours.
SCHEDULES: Dict[str, str] = {
    'full': '1:4:1',
    'short': '0.66:8:2,0.34:4:1',
    'paper': '0.3:16:2,0.4:8:2,0.3:4:1',
}

_FRACTION_TOL = 1e-6
_DENOMINATOR = 10 ** 9  # a phase fraction is read as the nearest ratio with at most this denominator

ScheduleSpec = Union[str, Sequence[Any], 'RetokenizationSchedule']


@dataclass(frozen=True)
class Phase:
    """``fraction`` of the training steps run with the stage-1 tokenizer at ``stride`` and ``dilation``."""

    fraction: float
    stride: int
    dilation: int = 1

    def __str__(self) -> str:
        fraction = f'{self.fraction:g}'  # short, unless that changes the value: then all the digits it takes
        if float(fraction) != self.fraction:
            fraction = repr(float(self.fraction))
        return f'{fraction}:{self.stride}:{self.dilation}'


@dataclass(frozen=True)
class RetokenizationSchedule:
    """Consecutive phases whose fractions sum to 1; the last one is the full token grid (stride 4, dilation 1)."""

    phases: Tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError('a re-tokenization schedule needs at least one phase')
        for i, p in enumerate(self.phases):
            if not (isinstance(p.fraction, (int, float)) and not isinstance(p.fraction, bool)
                    and math.isfinite(p.fraction) and 0 < p.fraction <= 1):
                raise ValueError(f'phase {i + 1}: fraction must be a number in (0, 1], got {p.fraction!r}')
            for name, value in (('stride', p.stride), ('dilation', p.dilation)):
                if not is_count(value):
                    raise ValueError(f'phase {i + 1} ({p}): {name} must be an integer >= 1, got {value!r}')
        total = sum(p.fraction for p in self.phases)
        if abs(total - 1) > _FRACTION_TOL:
            raise ValueError(f'phase fractions must sum to 1, got {total:g} in {self}')
        last = self.phases[-1]
        if (last.stride, last.dilation) != FULL_TOKENS:
            raise ValueError(f'the last phase must train on the full token grid (stride {FULL_TOKENS[0]}, '
                             f'dilation {FULL_TOKENS[1]}), the grid the model is evaluated on; got {last}')

    def __str__(self) -> str:
        return ','.join(str(p) for p in self.phases)

    @property
    def settings(self) -> Tuple[Tuple[int, int], ...]:
        """(stride, dilation) of each phase."""
        return tuple((p.stride, p.dilation) for p in self.phases)

    def boundaries(self) -> Tuple[float, ...]:
        """Training progress (in [0, 1]) at which each phase ends; the last is exactly 1."""
        ends, total = [], 0.
        for p in self.phases[:-1]:
            total += p.fraction
            ends.append(total)
        return (*ends, 1.)

    def phase_ends(self, total_steps: int) -> Tuple[int, ...]:
        """The training step (0-based, exclusive) at which each phase ends when training takes ``total_steps``:
        ``ceil(boundary * total_steps)``, in exact rational arithmetic (the fractions as their shortest ratios,
        e.g. 0.6 as 3/5), so that no float rounding moves a step across a boundary however long the run."""
        ends, total = [], Fraction(0)
        for p in self.phases[:-1]:
            total += Fraction(p.fraction).limit_denominator(_DENOMINATOR)
            ends.append(min(math.ceil(total * total_steps), total_steps))
        return (*ends, total_steps)

    def check_steps(self, total_steps: int) -> None:
        """Raise ``ValueError`` if a phase would run no step of ``total_steps``: its fraction of them is below
        one step."""
        ends = self.phase_ends(total_steps)
        for i, (p, start, end) in enumerate(zip(self.phases, (0, *ends[:-1]), ends)):
            if end <= start:
                raise ValueError(f're-tokenization schedule {self}: phase {i + 1} ({p}) gets none of the '
                                 f'{total_steps} training steps ({p.fraction:g} x {total_steps} is less than one); '
                                 f'train for more steps or use a schedule with fewer, longer phases')

    def phase_index(self, step: int, total_steps: int) -> int:
        """Index of the phase that runs training step ``step`` (0-based) of ``total_steps``."""
        if not 0 <= step < total_steps:
            raise ValueError(f'step {step} is outside [0, {total_steps})')
        return bisect.bisect_right(self.phase_ends(total_steps), step)

    def phase_at(self, step: int, total_steps: int) -> Phase:
        return self.phases[self.phase_index(step, total_steps)]


def _phase(item: Any, index: int) -> Phase:
    if isinstance(item, Phase):
        return item
    if isinstance(item, dict):
        unknown = sorted(set(item) - {'fraction', 'stride', 'dilation'})
        if unknown or 'fraction' not in item or 'stride' not in item:
            raise ValueError(f'phase {index + 1}: expected keys fraction, stride and optionally dilation, got {item!r}')
        return Phase(item['fraction'], item['stride'], item.get('dilation', 1))
    if isinstance(item, (list, tuple)) and len(item) in (2, 3):
        return Phase(*item)
    if isinstance(item, str):
        parts = item.strip().split(':')
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            return Phase(plain_float(parts[0]), *(plain_int(v) for v in parts[1:]))
        except ValueError:
            raise ValueError(f'phase {index + 1}: expected "fraction:stride[:dilation]" (e.g. 0.5:8:2), '
                             f'got {item.strip()!r}') from None
    raise ValueError(f'phase {index + 1}: expected "fraction:stride:dilation", [fraction, stride, dilation] or '
                     f'{{"fraction": ..., "stride": ..., "dilation": ...}}, got {item!r}')


def parse_schedule(spec: ScheduleSpec) -> RetokenizationSchedule:
    """A schedule from a name in :data:`SCHEDULES`, a ``fraction:stride:dilation,...`` string or a list of
    phases (as strings, lists or dicts)."""
    if isinstance(spec, RetokenizationSchedule):
        return spec
    if isinstance(spec, str):
        text = SCHEDULES.get(spec.strip(), spec)
        if ':' not in text:
            raise ValueError(f're-tokenization schedule: expected a name ({", ".join(SCHEDULES)}) or '
                             f'"fraction:stride[:dilation],...", got {spec!r}')
        items: Sequence[Any] = text.split(',')
    elif isinstance(spec, (list, tuple)):
        items = spec
    else:
        raise ValueError(f'a re-tokenization schedule is a name, a string or a list of phases, got {spec!r}')
    return RetokenizationSchedule(tuple(_phase(item, i) for i, item in enumerate(items)))


def format_tokenizer(stride: int, dilation: int) -> str:
    """``"stride:dilation"``, the form :func:`parse_tokenizer` reads (e.g. ``8:2``)."""
    return f'{stride}:{dilation}'


def parse_tokenizer(spec: Union[str, Sequence[int]]) -> Tuple[int, int]:
    """(stride, dilation) of the stage-1 tokenizer from ``"stride[:dilation]"`` (e.g. ``8:2``) or a pair."""
    parts = spec.strip().split(':') if isinstance(spec, str) else spec
    try:
        values = [plain_int(v) if isinstance(v, str) else v if type(v) is int else None for v in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) not in (1, 2) or None in values or min(values) < 1:
        raise ValueError(f'tokenizer setting: expected "stride[:dilation]" with integers >= 1 (e.g. 8:2; full '
                         f'tokens are {format_tokenizer(*FULL_TOKENS)}), got {spec!r}')
    stride, dilation = (*values, 1)[:2]
    return stride, dilation


@dataclass(frozen=True)
class ScheduleCost:
    """Per-phase cost of a schedule for one model and input size (MACs of one image's forward pass)."""

    schedule: RetokenizationSchedule
    input_size: Tuple[int, int, int]
    tokens: Tuple[int, ...]
    macs: Tuple[int, ...]
    full_tokens: int
    full_macs: int

    @property
    def relative_macs(self) -> float:
        """Training compute of the schedule relative to full-token training: sum(f_i * macs_i) / macs_full."""
        return sum(p.fraction * m for p, m in zip(self.schedule.phases, self.macs)) / self.full_macs

    def macs_of(self, stride: int, dilation: int) -> int:
        return self.macs[self.schedule.settings.index((stride, dilation))]

    def table(self) -> str:
        rows = [f'{"fraction":>8}  {"stride":>6}  {"dilation":>8}  {"tokens":>6}  {"MMACs/img":>10}']
        rows += [f'{p.fraction:>8g}  {p.stride:>6}  {p.dilation:>8}  {t:>6}  {m / 1e6:>10.2f}'
                 for p, t, m in zip(self.schedule.phases, self.tokens, self.macs)]
        rows.append(f'training MACs relative to full tokens ({self.full_tokens} tokens, {self.full_macs / 1e6:.2f} '
                    f'MMACs/img): {self.relative_macs:.4f}')
        return '\n'.join(rows)


def schedule_cost(model: AsViT, schedule: ScheduleSpec, input_size: Sequence[int]) -> ScheduleCost:
    """Count the MACs per image of each phase (and of full tokens) on ``model``; its tokenizer is restored."""
    schedule = parse_schedule(schedule)
    check_input_size(input_size)
    embed = model.patch_embed
    size = (int(input_size[1]), int(input_size[2]))
    saved = (embed.stride, embed.dilation)
    counted: Dict[Tuple[int, int], Tuple[int, int]] = {}
    try:
        for setting in (FULL_TOKENS, *schedule.settings):
            if setting not in counted:
                model.set_tokenizer(*setting)
                counted[setting] = (math.prod(embed.grid_size(size)), count_macs(model, tuple(input_size)))
    finally:
        model.set_tokenizer(*saved)
    return ScheduleCost(
        schedule=schedule, input_size=tuple(int(v) for v in input_size),
        tokens=tuple(counted[s][0] for s in schedule.settings), macs=tuple(counted[s][1] for s in schedule.settings),
        full_tokens=counted[FULL_TOKENS][0], full_macs=counted[FULL_TOKENS][1])


def plot_schedule(cost: ScheduleCost, path: Union[str, Path], title: str = '') -> Path:
    """Save a PNG of the schedule: stage-1 tokens and MACs per image against training progress."""
    starts = (0., *cost.schedule.boundaries()[:-1])
    xs = [x for s, e in zip(starts, cost.schedule.boundaries()) for x in (s, e)]
    fig = new_figure(figsize=(6.4, 5.2))
    ax_tokens, ax_macs = fig.subplots(2, 1, sharex=True)
    for ax, values, full, label in ((ax_tokens, cost.tokens, cost.full_tokens, 'stage-1 tokens'),
                                    (ax_macs, [m / 1e6 for m in cost.macs], cost.full_macs / 1e6, 'MMACs / image')):
        ax.plot(xs, [v for v in values for _ in (0, 1)], color='tab:blue', label='schedule')
        ax.axhline(full, color='tab:gray', linestyle='--', label='full tokens')
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.15 * max(full, *values))
        ax.grid(alpha=.3)
    for p, s, e, t in zip(cost.schedule.phases, starts, cost.schedule.boundaries(), cost.tokens):
        ax_tokens.annotate(f's{p.stride} d{p.dilation}', ((s + e) / 2, t), ha='center', va='bottom', fontsize=8)
    ax_macs.legend(loc='lower right')
    ax_macs.set_xlabel('training progress')
    ax_macs.set_xlim(0, 1)
    fig.suptitle(title or f'{cost.schedule}: {cost.relative_macs:.1%} of full-token training MACs')
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=120)
    return path
