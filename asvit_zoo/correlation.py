"""The complexity study (``asvit correlate``): do the training-free measures rank trained accuracy?

``N`` topologies are drawn uniformly from the search space (distinct, from ``seed``), each as the network the
search measures (stage-1 width ``embed_dim``, one block per stage). Each is measured at initialisation
(length distortion, curvature, their combination and the NTK condition number, :func:`measure_genotype`) and
trained briefly on Fashion-MNIST with the trainer; Kendall's tau between test accuracy and each measure (and
parameters and GMACs as baselines) says how well the measure ranks the topologies. The paper's claim is that
length distortion ranks them well (larger is better) and that a smaller NTK condition number is better.

Results are written after every topology (``records.json``), so an interrupted study resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from .cost import count_macs, param_count
from .datasets import search_batch
from .devices import resolve_device
from .fileio import (check_folder, check_saved_run, json_number, new_figure, read_json, save_figure, write_json,
                     write_text)
from .genotype import HEAD_DIVISORS, NUM_STAGES, SEARCH_SPACE, Genotype
from .measures import measure_genotype
from .validation import (COUNT, POSITIVE, SEED_RANGE, Range, changed_settings, check_count, check_fields, check_seed,
                         offset_seed, setting)

__all__ = ['CorrelationConfig', 'sample_topologies', 'kendall_table', 'correlate']

PathLike = Union[str, os.PathLike]
RECORDS_FILE = 'records.json'
SUMMARY_FILE = 'correlation.json'
TABLE_FILE = 'correlation.md'
# name in a record -> (label, sign the paper expects for accuracy: +1 larger is better, -1 smaller is better)
SCORES = {
    'exp': ('length distortion', +1),
    'curvature': ('curvature', +1),
    'combined': ('length distortion x curvature (combined)', +1),
    'ntk': ('NTK condition number', -1),
    'params': ('parameters (baseline)', +1),
    'gmacs': ('GMACs (baseline)', +1),
}


@dataclass(frozen=True)
class CorrelationConfig:
    n: int = setting(24, allowed=Range(3), why='topologies of a rank correlation')
    embed_dim: int = setting(32, allowed=Range(max(SEARCH_SPACE['heads']) // HEAD_DIVISORS[0]),
                             why='stage 1 of a sampled topology with the most heads needs a channel per head')
    depths: Tuple[int, ...] = setting((1, 1, 1, 1), allowed=COUNT)
    measure_image_size: int = setting(32, allowed=COUNT)
    repeat: int = setting(1, allowed=COUNT)
    ntk_batch: int = setting(8, allowed=Range(2), why='a Gram matrix of one image has condition 1')
    img_size: int = setting(28, allowed=COUNT)
    epochs: int = setting(1, allowed=COUNT)
    train_subset: Optional[int] = setting(15000, allowed=COUNT)
    eval_subset: Optional[int] = setting(2000, allowed=COUNT)
    batch_size: int = setting(128, allowed=COUNT)
    lr: float = setting(2e-3, allowed=POSITIVE)
    seed: int = setting(0, allowed=SEED_RANGE)
    device: str = 'cpu'

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.depths) != NUM_STAGES:
            raise ValueError(f'depths must have {NUM_STAGES} values (one per stage), got {self.depths!r}')
        if self.train_subset is not None and self.train_subset < self.batch_size:
            raise ValueError(f'train_subset must be at least batch_size ({self.batch_size}): a study trains on '
                             f'whole batches, got {self.train_subset}')
        resolve_device(self.device)


def sample_topologies(n: int, seed: int) -> List[Genotype]:
    """``n`` distinct seed topologies drawn uniformly from the search space."""
    check_count('n', n)
    check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sizes = [len(values) for values in SEARCH_SPACE.values()]
    total = math.prod(sizes)
    if n > total:
        raise ValueError(f'n={n} exceeds the {total} topologies of the search space')
    found: Dict[str, Genotype] = {}
    while len(found) < n:
        decisions = [int(torch.randint(size, (1,), generator=generator)) for size in sizes]
        genotype = Genotype.from_decisions(decisions)
        found.setdefault(str(genotype), genotype)
    return list(found.values())


def _study_one(config: CorrelationConfig, index: int, seed_genotype: Genotype, inputs: torch.Tensor,
               out: Path) -> Dict[str, Any]:
    """Measure (NTK on ``inputs``) and train one topology."""
    from .train import TrainConfig, train

    genotype = seed_genotype.scaled(config.depths, config.embed_dim)
    start = time.perf_counter()
    m = measure_genotype(genotype, image_size=config.measure_image_size, repeat=config.repeat, inputs=inputs,
                         seed=offset_seed(config.seed, index), device=config.device)
    measured = time.perf_counter()
    cfg = TrainConfig(genotype=str(genotype), img_size=config.img_size, epochs=config.epochs,
                      train_subset=config.train_subset, eval_subset=config.eval_subset, batch_size=config.batch_size,
                      lr=config.lr, warmup_epochs=0, seed=config.seed, device=config.device)
    run_dir = out / 'runs' / f'{index:03d}'
    result = train(cfg, run_dir, resume=(run_dir / 'last.pth.tar').is_file(), progress=False)
    model = result.model.cpu()

    return {
        'index': index, 'genotype': str(genotype),
        **{name: json_number(getattr(m, name)) for name in ('exp', 'curvature', 'combined', 'ntk')},
        'bad': bool(m.bad), 'params': param_count(model),
        'gmacs': count_macs(model, (1, config.img_size, config.img_size)) / 1e9, 'top1': result.final['eval_top1'],
        'measure_seconds': measured - start, 'train_seconds': result.final['train_time'],
    }


def kendall_table(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Kendall's tau (tau-b) and its p-value between test top-1 and each score, over the records where the
    score is finite; ``agrees`` says whether the sign is the one the paper expects. tau is None where it is
    undefined: fewer than 3 records, or every top-1 (or every score) equal."""
    from scipy.stats import kendalltau

    rows = []
    for key, (label, sign) in SCORES.items():
        pairs = [(r[key], r['top1']) for r in records if r.get(key) is not None and math.isfinite(r[key])]
        tau = p = math.nan
        if len(pairs) >= 3:
            result = kendalltau([p[0] for p in pairs], [p[1] for p in pairs])
            tau, p = float(result.statistic), float(result.pvalue)
        if not math.isfinite(tau):  # too few records, or a constant side: no ranking to compare
            rows.append(dict(score=key, label=label, n=len(pairs), tau=None, p_value=None, expected_sign=sign,
                             agrees=None))
            continue
        rows.append(dict(score=key, label=label, n=len(pairs), tau=tau, p_value=p, expected_sign=sign,
                         agrees=bool(tau * sign > 0)))
    return rows


def _markdown(rows: Sequence[Dict[str, Any]], config: CorrelationConfig, seconds: float) -> str:
    lines = [f'Kendall tau between Fashion-MNIST test top-1 after {config.epochs} epoch(s) and each score, '
             f'{config.n} topologies, {seconds / 60:.1f} min.', '',
             '| score | n | Kendall tau | p-value | expected sign | sign as expected |', '|---|---:|---:|---:|---|---|']
    for r in rows:
        sign = '+' if r['expected_sign'] > 0 else '-'
        if r['tau'] is None:  # undefined: 'n/a', which a minus sign cannot be mistaken for
            lines.append(f"| {r['label']} | {r['n']} | n/a | n/a | {sign} | n/a |")
            continue
        lines.append(f"| {r['label']} | {r['n']} | {r['tau']:+.3f} | {r['p_value']:.3g} | {sign} | "
                     f"{'yes' if r['agrees'] else 'no'} |")
    return '\n'.join(lines) + '\n'


def _scatter(records: Sequence[Dict[str, Any]], rows: Sequence[Dict[str, Any]], out: Path) -> List[Path]:
    paths = []
    for row in rows:
        key = row['score']
        points = [(r[key], r['top1']) for r in records if r.get(key) is not None]
        fig = new_figure(figsize=(5, 4))
        ax = fig.subplots()
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=18)
        xs = [p[0] for p in points]
        if key in ('ntk', 'params', 'gmacs', 'combined') and xs and min(xs) > 0 and max(xs) >= 10 * min(xs):
            ax.set_xscale('log')  # over a tenfold range and more; within one, log ticks label as 1.35x10^6
        ax.set_xlabel(row['label'])
        ax.set_ylabel('test top-1 (%)')
        tau = 'n/a' if row['tau'] is None else f"{row['tau']:+.3f}"
        ax.set_title(f'Kendall tau {tau} (n={row["n"]})')
        ax.grid(alpha=.3)
        fig.tight_layout()
        path = out / f'scatter_{key}.png'
        save_figure(fig, path, dpi=110)
        paths.append(path)
    return paths


def correlate(config: CorrelationConfig, out: PathLike, progress: bool = True) -> Dict[str, Any]:
    """Run (or continue) the study into ``out``; returns the summary written to ``correlation.json``."""
    out = check_folder(out, 'study folder')
    topologies = sample_topologies(config.n, config.seed)
    records_path = out / RECORDS_FILE
    saved = check_saved_run(read_json(records_path), records_path, 'a correlation study', ('config', 'records')) \
        if records_path.is_file() else {}
    changed = changed_settings(saved['config'], config) if saved else []
    if changed:
        raise ValueError(f'{records_path} was written with other settings ({"; ".join(changed)}); use the same '
                         f'options to continue it, or another output folder')
    records: List[Dict[str, Any]] = saved.get('records', [])
    seconds = saved.get('seconds', 0.)
    inputs = search_batch('fashion-mnist', config.ntk_batch, config.measure_image_size, seed=config.seed)
    out.mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(len(records), config.n), desc='correlate', initial=len(records), total=config.n,
                      disable=not progress):
        start = time.perf_counter()
        records.append(_study_one(config, index, topologies[index], inputs, out))
        seconds += time.perf_counter() - start
        write_json(records_path, {'config': dataclasses.asdict(config), 'records': records, 'seconds': seconds})
    rows = kendall_table(records)
    _scatter(records, rows, out)
    table = _markdown(rows, config, seconds)
    write_text(out / TABLE_FILE, table)
    summary = {'config': dataclasses.asdict(config), 'kendall': rows, 'seconds': seconds, 'table': table}
    write_json(out / SUMMARY_FILE, summary)
    return summary
