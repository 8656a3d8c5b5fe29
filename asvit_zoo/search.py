"""REINFORCE seed search over the As-ViT topology space, rewarded by training-free measures (spec, section 4).

Each step samples one topology from a policy (one categorical distribution per decision of
:data:`~asvit_zoo.genotype.SEARCH_SPACE`), builds it at width C = 32 and depths [1, 1, 1, 1], measures it
at initialisation (NTK condition number and/or expected length distortion, mean over ``repeat``
copies) and rewards the policy with how much the measures improved over the previous step::

    change(m) = (m_new - m_previous) / (max - min of the last 20 values of m + 1e-6)
    reward    = -change(ntk) + change(exp) - budget_penalty        (only the selected measures)

The first step has no previous value: its measure term is 0. The baseline is a bias-corrected
exponential moving average (momentum 0.9) of the rewards, updated with the reward before it is
used, and the policy takes one Adam step (lr 0.08) on ``-log_prob(sample) * (reward - baseline)``.
The result is the most likely value of every decision.

Bad values. A network whose NTK condition number is NaN or infinite (``Measures.bad``) takes the
worst (largest) condition number seen so far, and, as in the authors' code, keeps following it:
when a later network sets a new worst value, earlier bad entries are raised to it. A NaN or
infinite length distortion is handled the same way with the smallest value seen so far. Before any
finite value of a measure has been seen, a bad entry has no value and its change counts as 0; the
first finite value fills it. (Unlike the authors' code, which turns a NaN condition number into -1
and stops flagging bad networks when length distortion is also rewarded.)

Budgets. With ``max_params`` (parameters) and/or ``max_gmacs`` (GMACs at the search resolution) the
sampled network pays a soft penalty, at every step including the first::

    budget_penalty = max(0, params / max_params - 1) + max(0, gmacs / max_gmacs - 1)

so a network 10% over a budget loses 0.1, about a tenth of a full-range change of one measure. The budgets
apply to the network the search measures (width 32, depths [1, 1, 1, 1], 1000 classes), not to a scaled
model: :func:`search_cost_range` gives its smallest and largest cost (1.2M to 2.4M parameters; about 0.15 to
0.55 GMACs at 224). A budget at or above the largest would never bind and is refused.

Every random draw (policy init, samples, the per-step measurement seeds) comes from one
``torch.Generator`` whose state is checkpointed with the policy, the optimizer, the baseline and
the histories after every step, so a resumed run repeats the uninterrupted one exactly.

Under torchrun every process runs the same policy from the same seed and the processes share the ``repeat``
copies of each measurement; the records are those of one process (to rounding: the same with equal thread
counts), and a run may be resumed with another number of processes. Process 0 writes the run folder.

Run folder: ``steps.jsonl``, one JSON record per step (``step``; the sampled ``genotype``; ``derived``,
the argmax genotype after the update; ``measures`` as measured, null where not finite, and ``bad``;
``values``, the history values the reward used; ``changes``; ``penalty``; ``reward``; ``baseline``;
``entropy`` of the policy that sampled; ``params``; ``gmacs``; ``measure_seconds``, the wall time of each
measure; ``seconds`` of the step), ``state.pt``
(checkpoint, written atomically after every step), and at the end ``summary.json`` (the derived
genotype, its measures, params, GMACs, wall time of the run over all sessions, the config) and
``curves.png`` (policy entropy, reward and baseline per step).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.distributions import Categorical
from tqdm import tqdm

from .cost import genotype_gmacs, genotype_params
from .datasets import search_batch
from .devices import resolve_device
from .distributed import DistEnv, barrier, process_group
from .fileio import (check_folder, check_saved_run, json_number, new_figure, read_json_lines, save_figure, save_torch,
                     write_json)
from .hub import load_torch_checkpoint
from .genotype import SEARCH_SPACE, Genotype
from .measures import NUM_CLASSES, Measures, measure_genotype
from .validation import COUNT, POSITIVE, SEED_RANGE, changed_settings, check_fields, setting

__all__ = ['SearchConfig', 'SearchResult', 'Policy', 'MeasureHistory', 'Baseline', 'budget_penalty',
           'search_cost_range', 'search_space_extreme', 'search']

MEASURE_SIGNS = {'ntk': -1.0, 'exp': 1.0}  # reward sign: lower NTK condition is better, longer curves are better
SEARCH_EMBED_DIM = 32
SEARCH_DEPTHS = (1, 1, 1, 1)
LEARNING_RATE = 0.08
EMA_MOMENTUM = 0.9
HISTORY_WINDOW = 20
CHANGE_EPS = 1e-6
POLICY_INIT_STD = 1e-3
CHECKPOINT_VERSION = 1
STATE_KEYS = ('config', 'step', 'log_bytes', 'elapsed', 'generator', 'policy', 'optimizer', 'baseline', 'histories')
# Config fields a resumed run may change: more steps extend it, the device does not change the algorithm.
RESUMABLE_CHANGES = ('steps', 'device')

STEPS_FILE = 'steps.jsonl'
STATE_FILE = 'state.pt'
SUMMARY_FILE = 'summary.json'
CURVES_FILE = 'curves.png'

Scorer = Callable[..., Measures]


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search run; all but ``steps`` and ``device`` must match when a run is resumed."""

    steps: int = setting(500, allowed=COUNT)
    repeat: int = setting(5, allowed=COUNT)
    batch_size: int = setting(16, allowed=COUNT)
    image_size: int = setting(224, allowed=COUNT)
    measures: Tuple[str, ...] = ('ntk', 'exp')
    data: str = 'fashion-mnist'
    device: str = 'cpu'
    seed: int = setting(0, allowed=SEED_RANGE)
    max_params: Optional[float] = setting(None, allowed=POSITIVE)
    max_gmacs: Optional[float] = setting(None, allowed=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)
        measures = tuple(self.measures)
        unknown = sorted(set(measures) - set(MEASURE_SIGNS))
        if unknown or len(set(measures)) != len(measures):
            raise ValueError(f'measures must be a non-empty list of distinct names from {sorted(MEASURE_SIGNS)}, '
                             f'got {list(measures)}')
        object.__setattr__(self, 'measures', tuple(m for m in MEASURE_SIGNS if m in measures))
        if 'ntk' in self.measures and self.batch_size < 2:
            raise ValueError(f'batch_size must be >= 2 for the ntk measure (a Gram matrix of one image has condition '
                             f'1), got {self.batch_size}')
        resolve_device(self.device)
        if self.max_params is not None or self.max_gmacs is not None:
            self._check_budgets_bind()

    def _check_budgets_bind(self) -> None:
        ranges = search_cost_range(self.image_size)
        for name, key, form in (('max_params', 'params', ',.0f'), ('max_gmacs', 'gmacs', '.4g')):
            budget, (low, high) = getattr(self, name), ranges[key]
            if budget is not None and budget >= high:
                at = f' at image_size {self.image_size}' if key == 'gmacs' else ''
                raise ValueError(f'{name} must be below {high:{form}}, the {key} of the largest network the search '
                                 f'measures (width {SEARCH_EMBED_DIM}, depths {list(SEARCH_DEPTHS)}: {low:{form}} to '
                                 f'{high:{form}}{at}), or unset; got {budget:{form}}, which no network reaches')


def search_space_extreme(largest: bool) -> Genotype:
    """The seed genotype of the largest (or smallest) network of the search space: the largest kernels and
    expansions with the smallest splits (global attention costs most), or the reverse; heads change neither."""
    return Genotype.from_decisions([choices.index((max if largest != name.startswith('split') else min)(choices))
                                    for name, choices in SEARCH_SPACE.items()])


def search_cost_range(image_size: int) -> Dict[str, Tuple[float, float]]:
    """``{'params': (smallest, largest), 'gmacs': (smallest, largest)}`` of the networks the search measures
    (width 32, depths [1, 1, 1, 1], 1000 classes), GMACs at ``image_size``: the costs of the two extreme
    genotypes of :data:`SEARCH_SPACE`, as every cost grows with kernels and expansions and falls with splits."""
    low, high = (search_space_extreme(largest).scaled(SEARCH_DEPTHS, SEARCH_EMBED_DIM) for largest in (False, True))
    return {'params': (genotype_params(low, NUM_CLASSES), genotype_params(high, NUM_CLASSES)),
            'gmacs': (genotype_gmacs(low, image_size, NUM_CLASSES), genotype_gmacs(high, image_size, NUM_CLASSES))}


@dataclass(frozen=True)
class SearchResult:
    genotype: Genotype
    summary: Dict[str, Any]


class Policy(nn.Module):
    """One logit vector per decision of :data:`SEARCH_SPACE`, initialised ``1e-3 * N(0, 1)``."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.logits = nn.ParameterList(
            nn.Parameter(POLICY_INIT_STD * torch.randn(len(choices), generator=generator))
            for choices in SEARCH_SPACE.values())

    def distributions(self) -> List[Categorical]:
        return [Categorical(logits=logits) for logits in self.logits]

    def sample(self, generator: torch.Generator) -> Tuple[Genotype, torch.Tensor, float]:
        """A sampled genotype, the log-probability of the sample (with grad) and the policy entropy."""
        dists = self.distributions()
        actions = [torch.multinomial(d.probs.detach(), 1, generator=generator).squeeze(0) for d in dists]
        log_prob = torch.stack([d.log_prob(a) for d, a in zip(dists, actions)]).sum()
        entropy = float(sum(d.entropy().detach() for d in dists))
        return Genotype.from_decisions([int(a) for a in actions]), log_prob, entropy

    def derive(self) -> Genotype:
        """The most likely genotype: argmax of each decision."""
        return Genotype.from_decisions([int(logits.argmax()) for logits in self.logits])


@dataclass
class MeasureHistory:
    """Past values of one measure and their change rule (see the module docstring for bad values)."""

    higher_is_better: bool
    values: List[float] = field(default_factory=list)
    bad: List[bool] = field(default_factory=list)

    def worst(self) -> float:
        """The worst finite value seen so far, NaN before any."""
        good = [v for v, b in zip(self.values, self.bad) if not b]
        if not good:
            return math.nan
        return min(good) if self.higher_is_better else max(good)

    def push(self, value: float, bad: bool = False) -> float:
        """Record a measured value (non-finite or ``bad``: replaced by the worst) and return its change."""
        worst = self.worst()
        bad = bad or not math.isfinite(value)
        if bad:
            value = worst
        elif math.isnan(worst) or (value < worst if self.higher_is_better else value > worst):
            self.values = [value if b else v for v, b in zip(self.values, self.bad)]
        self.values.append(value)
        self.bad.append(bad)
        return self.change()

    def change(self) -> float:
        """(newest - previous) / (max - min of the last 20 values + 1e-6); 0 without two known values."""
        recent = self.values[-HISTORY_WINDOW:]
        if len(recent) < 2 or math.isnan(recent[-1]):  # NaN only while no value is known: then all are NaN
            return 0.0
        return (recent[-1] - recent[-2]) / (max(recent) - min(recent) + CHANGE_EPS)


@dataclass
class Baseline:
    """Bias-corrected exponential moving average of the rewards (the authors' baseline)."""

    momentum: float = EMA_MOMENTUM
    numerator: float = 0.0
    denominator: float = 0.0

    def update(self, value: float) -> float:
        self.numerator = self.momentum * self.numerator + (1 - self.momentum) * value
        self.denominator = self.momentum * self.denominator + (1 - self.momentum)
        return self.numerator / self.denominator


def budget_penalty(config: SearchConfig, params: int, gmacs: float) -> float:
    """max(0, params / max_params - 1) + max(0, gmacs / max_gmacs - 1), over the budgets that are set."""
    penalty = 0.0
    for value, budget in ((params, config.max_params), (gmacs, config.max_gmacs)):
        if budget is not None:
            penalty += max(0.0, value / budget - 1)
    return penalty


def _measures_record(m: Measures, names: Sequence[str]) -> Dict[str, Any]:
    """The selected measures as JSON values (NaN and infinities become null) and the bad flag."""
    return {**{name: json_number(getattr(m, name)) for name in names}, 'bad': bool(m.bad)}


class _SearchState:
    """Everything a step changes; saved to ``state.pt`` after every step."""

    def __init__(self, config: SearchConfig):
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.policy = Policy(self.generator)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=LEARNING_RATE)
        self.baseline = Baseline()
        self.histories = {name: MeasureHistory(higher_is_better=MEASURE_SIGNS[name] > 0) for name in config.measures}
        self.step = 0  # completed steps
        self.log_bytes = 0  # size of steps.jsonl after the last completed step
        self.elapsed = 0.0  # wall time up to the last checkpoint, over all sessions

    def state_dict(self) -> Dict[str, Any]:
        return {
            'version': CHECKPOINT_VERSION,
            'config': dataclasses.asdict(self.config),
            'step': self.step,
            'log_bytes': self.log_bytes,
            'elapsed': self.elapsed,
            'generator': self.generator.get_state(),
            'policy': self.policy.state_dict(),
            'optimizer': self.optimizer.state_dict(),
            'baseline': dataclasses.asdict(self.baseline),
            'histories': {name: {'values': h.values, 'bad': h.bad} for name, h in self.histories.items()},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step, self.log_bytes, self.elapsed = state['step'], state['log_bytes'], state['elapsed']
        self.generator.set_state(state['generator'])
        self.policy.load_state_dict(state['policy'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.baseline = Baseline(**state['baseline'])
        for name, h in state['histories'].items():
            self.histories[name].values, self.histories[name].bad = list(h['values']), list(h['bad'])

    def save(self, path: Path) -> None:
        save_torch(path, self.state_dict())

    def draw_seed(self) -> int:
        return int(torch.randint(2 ** 31 - 1, (), generator=self.generator))


def _check_resumable(saved: Any, config: SearchConfig, path: Path) -> None:
    check_saved_run(saved, path, 'a search checkpoint', ('version',))
    if saved.get('version') != CHECKPOINT_VERSION:
        raise ValueError(f'{path}: checkpoint version {saved.get("version")!r}, this code reads {CHECKPOINT_VERSION}')
    check_saved_run(saved, path, 'a search checkpoint', STATE_KEYS)
    differences = changed_settings(saved['config'], config, keep=RESUMABLE_CHANGES)
    if differences:
        raise ValueError(f'{path}: cannot resume with different settings ({"; ".join(differences)})')
    if config.steps < saved['step']:
        raise ValueError(f'{path}: the run has already done {saved["step"]} steps, more than steps={config.steps}')


def _measure(scorer: Scorer, genotype: Genotype, config: SearchConfig, inputs: torch.Tensor, seed: int) -> Measures:
    return scorer(genotype, embed_dim=SEARCH_EMBED_DIM, depths=SEARCH_DEPTHS, image_size=config.image_size,
                  repeat=config.repeat, inputs=inputs, seed=seed, device=config.device, which=config.measures,
                  distributed=True)


def _run_step(state: _SearchState, scorer: Scorer, inputs: torch.Tensor) -> Dict[str, Any]:
    """One REINFORCE step; returns its steps.jsonl record."""
    config = state.config
    start = time.perf_counter()
    genotype, log_prob, entropy = state.policy.sample(state.generator)
    m = _measure(scorer, genotype, config, inputs, state.draw_seed())
    changes = {}
    for name, history in state.histories.items():
        value = getattr(m, name)
        changes[name] = history.push(math.nan if value is None else float(value), bad=name == 'ntk' and bool(m.bad))
    penalty = budget_penalty(config, m.params, m.gmacs)
    reward = sum(MEASURE_SIGNS[name] * change for name, change in changes.items()) - penalty
    baseline = state.baseline.update(reward)
    state.optimizer.zero_grad()
    (-log_prob * (reward - baseline)).backward()
    state.optimizer.step()
    return {
        'step': state.step,
        'genotype': str(genotype),
        'derived': str(state.policy.derive()),
        'measures': _measures_record(m, config.measures),
        'values': {name: json_number(h.values[-1]) for name, h in state.histories.items()},
        'changes': changes,
        'penalty': penalty,
        'reward': reward,
        'baseline': baseline,
        'entropy': entropy,
        'params': int(m.params),
        'gmacs': float(m.gmacs),
        'measure_seconds': m.seconds,
        'seconds': time.perf_counter() - start,
    }


def _save_curves(records: List[Dict[str, Any]], path: Path) -> None:
    """Policy entropy and reward per step, as a PNG."""
    steps = [r['step'] for r in records]
    fig = new_figure(figsize=(8, 5), tight_layout=True)
    ax_entropy, ax_reward = fig.subplots(2, 1, sharex=True)
    ax_entropy.plot(steps, [r['entropy'] for r in records])
    ax_entropy.set_ylabel('policy entropy (nats)')
    ax_reward.plot(steps, [r['reward'] for r in records], label='reward')
    ax_reward.plot(steps, [r['baseline'] for r in records], label='baseline (EMA)')
    ax_reward.set_ylabel('reward')
    ax_reward.set_xlabel('step')
    ax_reward.legend()
    save_figure(fig, path, dpi=100)


def search(config: SearchConfig, out_dir: os.PathLike, *, resume: bool = False, scorer: Scorer = measure_genotype,
           progress: bool = True) -> SearchResult:
    """Run (or with ``resume``, continue) a REINFORCE seed search, writing its run folder ``out_dir``.

    ``scorer`` has the signature of :func:`~asvit_zoo.measures.measure_genotype`. Without ``resume`` the
    folder must not already hold a run; with it, a run is continued from ``state.pt`` (or started when
    there is none) and reaches the same records and result as an uninterrupted run.

    Under torchrun every process runs the same policy from the same seed, and the processes share the
    ``repeat`` copies of each measurement (``measure_genotype(..., distributed=True)``), so each step takes the
    time of ``ceil(repeat / processes)`` copies; process 0 writes the run folder and shows the progress bar.
    """
    with process_group(config.device) as (env, _):
        return _search(config, check_folder(out_dir, 'search folder'), env, resume, scorer, progress)


def _search(config: SearchConfig, out: Path, env: DistEnv, resume: bool, scorer: Scorer,
            progress: bool) -> SearchResult:
    state_path, steps_path = out / STATE_FILE, out / STEPS_FILE
    if not resume and (state_path.exists() or steps_path.exists()):
        raise ValueError(f'{out} already holds a search run; pass --resume to continue it or choose another --out')
    state = _SearchState(config)
    if resume and state_path.exists():
        saved = load_torch_checkpoint(state_path)
        _check_resumable(saved, config, state_path)
        state.load_state_dict(saved)
    inputs = search_batch(config.data, config.batch_size, config.image_size, seed=config.seed)
    if state.step and (not steps_path.is_file() or steps_path.stat().st_size < state.log_bytes):
        raise ValueError(f'{steps_path} is missing or shorter than the {state.step} steps {state_path} records; '
                         f'it cannot be resumed')
    barrier()  # every process has read the folder before process 0 writes to it
    mark = time.perf_counter()
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    with open(steps_path, 'ab') if env.is_main else nullcontext() as log:
        if log is not None:
            log.truncate(state.log_bytes)  # drop whatever a killed run wrote after its last checkpoint
        bar = tqdm(total=config.steps, initial=state.step, desc='search', disable=not (progress and env.is_main),
                   dynamic_ncols=True)
        with bar:
            while state.step < config.steps:
                record = _run_step(state, scorer, inputs)
                state.step += 1
                if log is not None:
                    log.write((json.dumps(record) + '\n').encode())
                    log.flush()
                    os.fsync(log.fileno())
                    state.log_bytes = log.tell()
                now = time.perf_counter()
                state.elapsed, mark = state.elapsed + now - mark, now
                if env.is_main:
                    state.save(state_path)
                bar.set_postfix(reward=f'{record["reward"]:.3f}', entropy=f'{record["entropy"]:.2f}',
                                best=record['derived'], refresh=False)
                bar.update()
    return _finish(state, scorer, inputs, out, mark, env)


def _finish(state: _SearchState, scorer: Scorer, inputs: torch.Tensor, out: Path, mark: float,
            env: DistEnv) -> SearchResult:
    """Measure the derived genotype; process 0 writes summary.json and curves.png (``mark``: time of
    ``state.elapsed``)."""
    config = state.config
    genotype = state.policy.derive()
    m = _measure(scorer, genotype, config, inputs, state.draw_seed())
    summary = {
        'genotype': str(genotype),
        'measures': _measures_record(m, config.measures),
        'params': int(m.params),
        'gmacs': float(m.gmacs),
        'steps': state.step,
        'wall_seconds': state.elapsed + time.perf_counter() - mark,
        'config': dataclasses.asdict(config),
    }
    if env.is_main:
        write_json(out / SUMMARY_FILE, summary)
        records = read_json_lines(out / STEPS_FILE)
        _save_curves(records, out / CURVES_FILE)
    return SearchResult(genotype=genotype, summary=summary)
