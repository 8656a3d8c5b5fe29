"""Auto-scaling without training: greedy depth/width growth of a seed topology (spec, section 5).

Start from the seed with depths (1, 1, 1, 1) and a narrow stage-1 width C = 8. Each step adds one
block to one stage and widens to ``round(C * (1 + r))`` for r in 5%, 10%, 15%, 20% (a width equal to
the previous one in that list is dropped). Candidates whose *real-size* network (width
``WIDTH_SCALE * C``, 1000 classes) has more parameters than ``upper_limit`` are dropped. The others
are measured on the *narrow* network with the training-free measures (``ntk`` ascending, ``exp``
descending), ranked per measure (dense ranks: equal values share a rank), and the smallest rank sum
wins. Scaling stops once the real-size network has ``lower_bound`` parameters or no candidate is left.

Choices where the authors' code is odd (spec, section 5), and what we do:

* No-op width: at small C a candidate can keep the current width (``round(8 * 1.05) == 8``); it still
  adds a block, so it is a real candidate, and we keep it, as the reference does.
* Tie-break: when several candidates share the best rank sum, the reference picks the measure with the
  larger relative range ``(max - min) / max`` over the candidates and then takes the candidate with
  the *smaller* value of it, even for ``exp`` where larger ranks better. We take the *better* value of
  that measure (smaller ``ntk``, larger ``exp``): the rule the ranking itself states.
* A candidate whose NTK condition number is NaN ("bad" network) ranks last on ``ntk`` and is never
  chosen while a good candidate is left.
* Widths past the cap: every stage width is capped at ``MAX_WIDTH`` (1024) channels, so a real width C above
  it builds the network of C = 1024. The reference keeps such widths as candidates; we drop them (the
  genotype string cannot name them). Budgets of the paper's size never reach that width (Large: C = 180).

Variants: for each parameter budget, the first step whose real-size network reaches it. Its real
width is ``WIDTH_SCALE * C``, in steps of 4 channels, so a step can overshoot a budget by more than a
few percent; the variant then keeps that step's topology and depths and takes the real width whose
parameter count is nearest the budget (``width_fit`` in the record says so).

Every measurement of step ``s`` is seeded from ``(seed, s)``, so a resumed run gives the same
trajectory as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from .cost import genotype_gmacs, genotype_params
from .datasets import search_batch
from .devices import resolve_device
from .distributed import DistEnv, barrier, gather_objects, my_share, process_group
from .fileio import check_folder, check_saved_run, json_number, new_figure, read_json, save_figure, write_json
from .genotype import MAX_WIDTH, Genotype
from .measures import measure_genotype
from .validation import COUNT, POSITIVE, SEED_RANGE, Range, changed_settings, check_fields, offset_seed, setting

__all__ = ['ScalingConfig', 'Candidate', 'ScalingStep', 'real_size', 'run_scaling', 'select_variants',
           'load_trajectory', 'plot_trajectory']

START_WIDTH = 8
START_DEPTHS = (1, 1, 1, 1)
WIDTH_SCALE = 4  # the code's SCALE_WIDTH: real-size width = WIDTH_SCALE * narrow width
WIDTH_RATIOS = (0.05, 0.10, 0.15, 0.20)
NTK_BATCH = 16
# the measures that rank candidates, and that each step and candidate records (NaN: a bad network, saved as null)
SCALING_MEASURES = ('ntk', 'exp')
TRAJECTORY_FILE = 'trajectory.json'


@dataclass(frozen=True)
class ScalingConfig:
    seed_genotype: str
    budgets: Tuple[float, ...] = setting((29.0e6, 52.6e6, 88.1e6), allowed=POSITIVE)
    upper_limit: float = setting(110e6, allowed=POSITIVE)
    lower_bound: Optional[float] = setting(None, allowed=POSITIVE)  # default: the largest budget
    image_size: int = setting(224, allowed=COUNT)
    repeat: int = setting(1, allowed=COUNT)
    batch_size: int = setting(NTK_BATCH, allowed=Range(2), why='the NTK batch: a Gram matrix of one image has '
                                                              'condition 1')
    data: str = 'fashion-mnist'
    seed: int = setting(0, allowed=SEED_RANGE)
    device: str = 'cpu'

    def __post_init__(self) -> None:
        check_fields(self)
        seed = Genotype.parse(self.seed_genotype)
        if not seed.is_seed:
            raise ValueError(f'seed genotype must be in the seed form K,S,E|...|H, got {self.seed_genotype!r}')
        start = genotype_params(real_size(seed, START_DEPTHS, START_WIDTH))
        if min(self.budgets) < start:
            raise ValueError(f'budgets must be at least {start:,}, the parameters of the first network of the scaling '
                             f'(seed {seed} at depths {list(START_DEPTHS)} and width {WIDTH_SCALE * START_WIDTH}), got '
                             f'{min(self.budgets):,.0f}')
        if len(set(self.budgets)) < len(self.budgets):
            raise ValueError(f'budgets must be distinct (equal budgets give the same variant), got {self.budgets}')
        if max(self.budgets) > self.upper_limit:
            raise ValueError(f'the largest budget {max(self.budgets):.4g} exceeds upper_limit {self.upper_limit:.4g}')
        if self.lower_bound is not None and self.lower_bound < max(self.budgets):
            raise ValueError(f'lower_bound {self.lower_bound:.4g} is below the largest budget {max(self.budgets):.4g}: '
                             f'scaling would stop before reaching it')
        resolve_device(self.device)

    @property
    def stop_at(self) -> float:
        return self.lower_bound if self.lower_bound is not None else max(self.budgets)


@dataclass
class Candidate:
    depths: Tuple[int, ...]
    width: int  # narrow stage-1 width
    real_params: int
    ntk: float = math.nan
    exp: float = math.nan
    bad: bool = False
    rank_ntk: int = 0
    rank_exp: int = 0
    rank_sum: int = 0


@dataclass
class ScalingStep:
    step: int
    depths: Tuple[int, ...]
    width: int  # narrow stage-1 width
    genotype: str  # real size: scaled string with C = WIDTH_SCALE * width
    params: int  # real size, 1000 classes
    gmacs: float  # real size, 224x224
    ntk: float
    exp: float
    rank_sum: int
    seconds: float
    candidates: List[Candidate] = field(default_factory=list)
    bad: bool = False  # the step's network has a NaN measure (a trajectory saved before this field: False)


def real_size(seed: Genotype, depths: Sequence[int], width: int) -> Genotype:
    """The real-size genotype of a narrow network of stage-1 width ``width``."""
    return seed.scaled(tuple(depths), WIDTH_SCALE * width)


def _candidates(seed: Genotype, depths: Tuple[int, ...], width: int, upper_limit: float) -> List[Candidate]:
    widths: List[int] = []
    for r in WIDTH_RATIOS:
        w = round(width * (1 + r))
        if (not widths or w != widths[-1]) and WIDTH_SCALE * w <= MAX_WIDTH:  # wider: the same capped network
            widths.append(w)
    out = []
    for stage in range(len(depths)):
        grown = tuple(d + (i == stage) for i, d in enumerate(depths))
        for w in widths:
            params = genotype_params(real_size(seed, grown, w))
            if params <= upper_limit:
                out.append(Candidate(grown, w, params))
    return out


def _dense_ranks(values: Sequence[float], descending: bool) -> List[int]:
    """Rank 1 for the best value; equal values share a rank; NaN ranks last."""
    key = [(-v if descending else v) if not math.isnan(v) else math.inf for v in values]
    order = {v: i + 1 for i, v in enumerate(sorted(set(key)))}
    return [order[k] for k in key]


def _choose(candidates: List[Candidate]) -> Candidate:
    for c, r_ntk, r_exp in zip(candidates, _dense_ranks([c.ntk for c in candidates], False),
                               _dense_ranks([c.exp for c in candidates], True)):
        c.rank_ntk, c.rank_exp, c.rank_sum = r_ntk, r_exp, r_ntk + r_exp
    pool = [c for c in candidates if not c.bad] or candidates
    best = min(c.rank_sum for c in pool)
    tied = [c for c in pool if c.rank_sum == best]
    if len(tied) == 1:
        return tied[0]

    def relative_range(name: str) -> float:
        values = [getattr(c, name) for c in candidates if math.isfinite(getattr(c, name))]
        return (max(values) - min(values)) / max(values) if values and max(values) > 0 else 0.

    if relative_range('ntk') >= relative_range('exp'):
        return min(tied, key=lambda c: c.ntk if math.isfinite(c.ntk) else math.inf)
    return max(tied, key=lambda c: c.exp if math.isfinite(c.exp) else -math.inf)


def load_trajectory(out_dir: Path) -> Dict[str, Any]:
    """The saved trajectory of a scaling run folder (config, done, steps)."""
    path = Path(out_dir) / TRAJECTORY_FILE
    return check_saved_run(read_json(path), path, 'a scaling trajectory', ('config', 'done', 'steps'))


def _as_json(record: Dict[str, Any]) -> Dict[str, Any]:
    """A step's or candidate's fields as standard JSON: a NaN measure (a bad network) becomes null."""
    measures = {k: json_number(record[k]) for k in SCALING_MEASURES}
    candidates = {'candidates': [_as_json(c) for c in record['candidates']]} if 'candidates' in record else {}
    return {**record, **measures, **candidates}


def _save(out_dir: Path, config: ScalingConfig, steps: List[ScalingStep], done: bool) -> None:
    write_json(out_dir / TRAJECTORY_FILE, {
        'config': asdict(config), 'done': done, 'steps': [_as_json(asdict(s)) for s in steps]})


def _record_fields(record: Any, cls: type, what: str) -> Dict[str, Any]:
    """``record``, a saved ``cls`` as a JSON object, with ``depths`` as a tuple; a ValueError that names ``what``
    unless it has every field ``cls`` needs, no other, and a list of depths."""
    fields = dataclasses.fields(cls)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if not isinstance(record, dict):
        raise ValueError(f'{what} must be an object with the fields {required}, got {type(record).__name__}')
    problems = [f'{kind} {names}' for kind, names in (
        ('lacks the fields', [name for name in required if name not in record]),
        ('has unknown fields', sorted(set(record) - {f.name for f in fields}))) if names]
    if 'depths' in record and not isinstance(record['depths'], list):
        problems.append(f'has depths {record["depths"]!r}, not a list')
    if problems:
        raise ValueError(f'{what} {" and ".join(problems)}')
    # a measure saved as null was NaN (a bad network)
    measures = {k: math.nan for k in SCALING_MEASURES if k in record and record[k] is None}
    return {**record, **measures, 'depths': tuple(record['depths'])}


def _step_from_dict(record: Any, what: str) -> ScalingStep:
    step = _record_fields(record, ScalingStep, what)
    candidates = [Candidate(**_record_fields(c, Candidate, f'{what}, candidate {i}'))
                  for i, c in enumerate(step.get('candidates', []))]
    return ScalingStep(**{**step, 'candidates': candidates})


def run_scaling(config: ScalingConfig, out_dir: Path, resume: bool = False, progress: bool = True) -> List[ScalingStep]:
    """Grow the seed until the real-size network reaches ``config.stop_at`` parameters; write the
    trajectory (atomically, after every step) to ``out_dir/trajectory.json``. ``progress``: tqdm bars.

    Under torchrun the processes share each step's candidates (process ``k`` measures candidates ``k, k + N,
    ...``); every process returns the trajectory of one process, which process 0 writes.
    """
    with process_group(config.device) as (env, _):
        return _run_scaling(config, check_folder(out_dir, 'scaling folder'), env, resume, progress)


def _run_scaling(config: ScalingConfig, out_dir: Path, env: DistEnv, resume: bool,
                 progress: bool) -> List[ScalingStep]:
    steps: List[ScalingStep] = []
    if (out_dir / TRAJECTORY_FILE).exists():
        if not resume:
            raise FileExistsError(f'{out_dir / TRAJECTORY_FILE} exists: pass resume=True (--resume) to continue it, '
                                  f'or choose another output folder')
        saved = load_trajectory(out_dir)
        changed = changed_settings(saved['config'], config)
        if changed:
            raise ValueError(f'{out_dir / TRAJECTORY_FILE} was written with other settings ({"; ".join(changed)}); '
                             f'resume it with the same options')
        try:
            if not isinstance(saved['steps'], list):
                raise ValueError(f'"steps" must be a list, got {type(saved["steps"]).__name__}')
            steps = [_step_from_dict(s, f'step {i}') for i, s in enumerate(saved['steps'])]
        except ValueError as e:
            raise ValueError(f'{out_dir / TRAJECTORY_FILE}: {e}; delete it, or start again in a new folder') from None
        if saved['done']:
            return steps
    barrier()  # every process has read the trajectory before process 0 rewrites it
    seed = Genotype.parse(config.seed_genotype)
    batch = search_batch(config.data, config.batch_size, config.image_size, seed=config.seed)
    progress = progress and env.is_main

    def measure(depths: Tuple[int, ...], width: int, step_index: int, distributed: bool = False) -> Any:
        return measure_genotype(seed, embed_dim=width, depths=depths, image_size=config.image_size,
                                repeat=config.repeat, inputs=batch,
                                seed=offset_seed(config.seed * 100_003, step_index), device=config.device,
                                which=SCALING_MEASURES, distributed=distributed)

    def save(done: bool) -> None:
        if env.is_main:
            _save(out_dir, config, steps, done=done)

    def record(step_index: int, depths: Tuple[int, ...], width: int, params: int, ntk: float, exp: float, bad: bool,
               rank_sum: int, start: float, candidates: List[Candidate]) -> None:
        genotype = real_size(seed, depths, width)
        steps.append(ScalingStep(step_index, depths, width, str(genotype), params, genotype_gmacs(genotype), ntk, exp,
                                 rank_sum, time.perf_counter() - start, candidates, bad))
        save(done=False)

    if not steps:  # step 0: the seed at the start width (the processes share its copies)
        start, depths = time.perf_counter(), START_DEPTHS
        m = measure(depths, START_WIDTH, 0, distributed=True)
        params = genotype_params(real_size(seed, depths, START_WIDTH))
        record(0, depths, START_WIDTH, params, m.ntk, m.exp, m.bad, 0, start, [])
    depths, width, params = steps[-1].depths, steps[-1].width, steps[-1].params
    bar = tqdm(desc='scaling', unit='step', initial=len(steps), disable=not progress)
    while params < config.stop_at:
        start = time.perf_counter()
        step_index = len(steps)
        candidates = _candidates(seed, depths, width, config.upper_limit)
        if not candidates:
            break
        measured: Dict[int, Tuple[float, float, bool]] = {}
        for i in tqdm(my_share(len(candidates)), desc=f'step {step_index}', unit='cand', leave=False,
                      disable=not progress):
            m = measure(candidates[i].depths, candidates[i].width, step_index)
            measured[i] = (m.ntk, m.exp, m.bad)
        for part in gather_objects(measured):
            for i, (ntk, exp, bad) in part.items():
                candidates[i].ntk, candidates[i].exp, candidates[i].bad = ntk, exp, bad
        chosen = _choose(candidates)
        depths, width, params = chosen.depths, chosen.width, chosen.real_params
        record(step_index, depths, width, params, chosen.ntk, chosen.exp, chosen.bad, chosen.rank_sum, start,
               candidates)
        bar.update(1)
        bar.set_postfix(params=f'{params / 1e6:.1f}M', genotype=steps[-1].genotype)
    bar.close()
    save(done=True)
    return steps


def select_variants(seed_genotype: str, steps: Sequence[ScalingStep], budgets: Sequence[float]) -> List[Dict[str, Any]]:
    """For each budget, the first step whose real-size network reaches it, with its real width fitted to
    the budget when the step overshoots (see the module docstring)."""
    seed = Genotype.parse(seed_genotype)
    out = []
    for budget in budgets:
        step = next((s for s in steps if s.params >= budget), None)
        if step is None:
            raise ValueError(f'no step of the trajectory reaches the budget of {budget:,.0f} parameters (its '
                             f'largest step has {max((s.params for s in steps), default=0):,}): scaling stops where '
                             f'every next candidate exceeds upper_limit; leave more room between the largest budget '
                             f'and upper_limit')
        fitted = _fit_width(seed, step.depths, WIDTH_SCALE * step.width, budget)
        genotype = seed.scaled(step.depths, fitted)
        out.append(dict(budget=budget, step=step.step, step_genotype=step.genotype, step_params=step.params,
                        width_fit=fitted != WIDTH_SCALE * step.width, genotype=str(genotype),
                        params=genotype_params(genotype)))
    return out


def _fit_width(seed: Genotype, depths: Tuple[int, ...], width: int, budget: float) -> int:
    """The real width <= ``width`` whose parameter count is nearest ``budget`` (params grow with width)."""
    lo, hi = seed.heads // 8, width  # params(lo) < budget <= params(hi), or lo == hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if genotype_params(seed.scaled(depths, mid)) < budget else (lo, mid)
    return min((lo, hi), key=lambda c: abs(genotype_params(seed.scaled(depths, c)) - budget))


def plot_trajectory(steps: Sequence[ScalingStep], budgets: Sequence[float], path: Path) -> Path:
    """Per-stage depth and the stage-1 width against real-size parameters, budgets marked."""
    params = [s.params / 1e6 for s in steps]
    fig = new_figure(figsize=(11, 4))
    ax_depth, ax_width = fig.subplots(1, 2)
    for i in range(4):
        ax_depth.plot(params, [s.depths[i] + 0.04 * (i - 1.5) for s in steps], marker='o', ms=3, drawstyle='steps-post',
                      label=f'stage {i + 1}')  # offsets keep overlapping stages visible
    ax_width.plot(params, [WIDTH_SCALE * s.width for s in steps], marker='o', ms=3, color='k', drawstyle='steps-post')
    for ax in (ax_depth, ax_width):
        for b in budgets:
            ax.axvline(b / 1e6, color='grey', ls='--', lw=1)
        ax.set_xlabel('real-size parameters (M)')
        ax.grid(alpha=.3)
    ax_depth.set_ylabel('blocks')
    ax_depth.yaxis.get_major_locator().set_params(integer=True)
    ax_depth.legend()
    ax_width.set_ylabel('stage-1 width C (real size)')
    fig.suptitle('As-ViT scaling trajectory')
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=120)
    return path


def check_variant_names(names: Sequence[str], budgets: Sequence[float]) -> None:
    """Raise ``ValueError`` unless ``names`` are distinct model names, one per budget, none of them another timm
    model's (checked before a run)."""
    from .asvit import check_architecture_name
    from .registry import MODEL_NAME_PATTERN, MODEL_NAME_RULE

    if len(names) != len(budgets) or len(set(names)) != len(names):
        raise ValueError(f'{len(names)} names {list(names)} for {len(budgets)} budgets; give one distinct name per '
                         f'budget')
    bad = [name for name in names if not MODEL_NAME_PATTERN.match(name)]
    if bad:
        raise ValueError(f'variant names must be model names ({MODEL_NAME_RULE}), got {bad}')
    for name in names:
        check_architecture_name(name)


def write_variant_cards(registry: Path, names: Sequence[str], config: ScalingConfig, steps: Sequence[ScalingStep],
                        command: str) -> List[Path]:
    """Write one registry card per budget (``names`` in budget order) with its provenance."""
    from . import __version__
    from .genotype import PAPER_LARGE
    from .registry import write_card

    check_variant_names(names, config.budgets)
    paper_large = Genotype.parse(PAPER_LARGE)
    paper_params = genotype_params(paper_large)  # compared with in the card of the largest budget
    by_step = {s.step: s for s in steps}
    written = []
    for name, variant in zip(names, select_variants(config.seed_genotype, steps, config.budgets)):
        step = by_step[variant['step']]
        genotype = Genotype.parse(variant['genotype'])
        fit = (f" Its real width was fitted from {WIDTH_SCALE * step.width} to {genotype.embed_dim} channels so that "
               f"the parameter count is nearest the budget." if variant['width_fit'] else '')
        description = (
            f"As-ViT variant found without training: the seed `{config.seed_genotype}` grown by greedy depth/width "
            f"scaling ranked by the NTK condition number and the length distortion, measured at "
            f"{config.image_size}x{config.image_size}. This is step {step.step} of the trajectory, the first whose "
            f"real-size network reaches {variant['budget'] / 1e6:.1f}M parameters.{fit} It has "
            f"{variant['params'] / 1e6:.2f}M parameters and {genotype_gmacs(genotype):.2f} GMACs at 224x224.")
        if variant['budget'] == max(config.budgets):
            description += (
                f" The paper's As-ViT Large (`{PAPER_LARGE}`, registered as `asvit_large_paper`) has "
                f"{paper_params / 1e6:.2f}M parameters and {genotype_gmacs(paper_large):.2f} GMACs: this variant has "
                f"{100 * (variant['params'] - paper_params) / paper_params:+.1f}% parameters, depths "
                f"{','.join(map(str, genotype.depths))} against {','.join(map(str, paper_large.depths))} and "
                f"width {genotype.embed_dim} against {paper_large.embed_dim}.")
        provenance = {
            'seed_genotype': config.seed_genotype, 'budget_params': round(variant['budget']), 'scaling_step': step.step,
            'step_genotype': step.genotype, 'width_fitted': variant['width_fit'], 'ntk': json_number(step.ntk),
            'exp': json_number(step.exp),
            'measure_image_size': config.image_size, 'repeat': config.repeat, 'ntk_batch': config.batch_size,
            'ntk_data': config.data, 'random_seed': config.seed, 'asvit_zoo_version': __version__,
            'torch_version': torch.__version__.split('+')[0], 'command': command,
        }
        written.append(write_card(registry, name, genotype, description, provenance).path)
    return written
