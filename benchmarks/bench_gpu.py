"""The GPU checks, in one run: a slice of the paper-setting seed search, and training with coarse tokens.

``search``: the first ``--search-steps`` steps of ``asvit_zoo.search.search`` in the paper's setting (224 px,
``repeat`` 5 copies per network, NTK batch 16, measures ntk and exp) on Gaussian-noise images, the run's
own ``steps.jsonl`` timing each step and each measure. Step 1 carries CUDA's warm-up and is reported apart;
the rest give seconds per step and the extrapolated wall time of a full 500-step search.

``train``: ``asvit_small`` at 224 px on the trainer's synthetic source with bf16 autocast, through the
trainer itself (:class:`asvit_zoo.train.Trainer`, its own epoch loop: data, AdamW, schedule, loss).
For each tokenizer setting (full tokens 4:1 and the coarse settings of the 'paper' schedule, 8:2 and
16:2) an untimed epoch of ``--train-steps`` steps warms up, then a second one is timed: images/s and
the peak GPU memory allocated during it. ``--compile inductor`` trains through torch.compile (each
setting's warm-up epoch compiles).

    python benchmarks/bench_gpu.py --output runs/bench_gpu
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import timm
import torch

from asvit_zoo.devices import resolve_device
from asvit_zoo.fileio import read_json_lines, write_json
from asvit_zoo.retokenization import FULL_TOKENS, SCHEDULES, format_tokenizer, parse_schedule
from asvit_zoo.search import STEPS_FILE, SearchConfig, search
from asvit_zoo.train import GENERIC_MODEL, TrainConfig, Trainer
from asvit_zoo.validation import check_compile_backend

PAPER_SEARCH_STEPS = 500


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device, reset: bool = False) -> Optional[int]:
    """Peak bytes allocated on ``device`` since the last reset (None off CUDA)."""
    if device.type != 'cuda':
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.max_memory_allocated(device)


def search_config(args: argparse.Namespace) -> SearchConfig:
    return SearchConfig(steps=args.search_steps, repeat=args.repeat, batch_size=args.ntk_batch,
                        image_size=args.search_size, measures=('ntk', 'exp'), data='noise', device=args.device, seed=0)


def search_slice(config: SearchConfig, args: argparse.Namespace, output: Path) -> Dict[str, Any]:
    run = output / 'search'
    shutil.rmtree(run, ignore_errors=True)  # this script's own run folder: a rerun starts a fresh search
    result = search(config, run, progress=args.progress)
    records = read_json_lines(run / STEPS_FILE)
    steady = records[1:]  # step 1 carries CUDA's warm-up
    seconds = [r['seconds'] for r in steady]
    per_measure = {name: statistics.median(r['measure_seconds'][name] for r in steady) for name in config.measures}
    median = statistics.median(seconds)
    return {'config': {k: v for k, v in vars(config).items() if k != 'measures'}, 'steps': len(records),
            'first_step_s': records[0]['seconds'], 'median_step_s': median, 'mean_step_s': statistics.fmean(seconds),
            'median_measure_s': per_measure, 'full_search_h': median * PAPER_SEARCH_STEPS / 3600,
            'wall_s': result.summary['wall_seconds'], 'derived': str(result.genotype)}


def _timed_epoch(trainer: Trainer, epoch: int, device: torch.device) -> Dict[str, Any]:
    _synchronize(device)
    _peak_memory(device, reset=True)
    start = time.perf_counter()
    record = trainer.train_epoch(epoch)
    _synchronize(device)
    return {'seconds': time.perf_counter() - start, 'peak_bytes': _peak_memory(device),
            'train_loss': record['train_loss']}


def train_settings_used() -> List[Tuple[int, int]]:
    """The tokenizer settings the train part times: the coarse ones of the paper's schedule, then full tokens."""
    coarse = [s for s in parse_schedule(SCHEDULES['paper']).settings if s != FULL_TOKENS]
    return [*coarse, FULL_TOKENS]


def train_config(args: argparse.Namespace) -> TrainConfig:
    """One trainer run whose schedule gives each setting (coarse ones first, as a schedule must end on full
    tokens) two epochs of ``--train-steps`` steps: the first warms up, the second is timed."""
    settings = train_settings_used()
    schedule = ','.join(f'{1 / len(settings)!r}:{stride}:{dilation}' for stride, dilation in settings)
    if '|' in args.model:
        model = dict(model=GENERIC_MODEL, genotype=args.model)
    elif timm.is_model(args.model) and args.model.startswith('asvit'):
        model = dict(model=args.model)
    else:
        raise ValueError(f'--model must be a registered As-ViT variant (asvit list) or a scaled genotype string '
                         f'K,S,E,L|...|H,C, got {args.model!r}')
    return TrainConfig(**model, data='synthetic', img_size=args.train_size, amp=args.amp,
                       batch_size=args.batch_size, epochs=2 * len(settings), warmup_epochs=0,
                       synthetic_train=args.batch_size * args.train_steps, synthetic_eval=args.batch_size,
                       retokenization=schedule, device=args.device, compile=args.compile)


def train_settings(cfg: TrainConfig, args: argparse.Namespace, output: Path) -> List[Dict[str, Any]]:
    device = resolve_device(cfg.device)
    settings = train_settings_used()
    trainer = Trainer(cfg, output / 'train', progress=args.progress)
    images = args.train_steps * args.batch_size
    rows = []
    for i, (stride, dilation) in enumerate(settings):  # phase i of the schedule and of its cost account
        trainer.train_epoch(2 * i)  # warm-up at this setting: kernels chosen, allocator primed
        timed = _timed_epoch(trainer, 2 * i + 1, device)
        rows.append({'tokenizer': format_tokenizer(stride, dilation), 'tokens': trainer.cost.tokens[i],
                     'gmacs_per_image': trainer.cost.macs[i] / 1e9, 'images': images,
                     'seconds': timed['seconds'], 'images_per_s': images / timed['seconds'],
                     'peak_gib': None if timed['peak_bytes'] is None else timed['peak_bytes'] / 2 ** 30,
                     'train_loss': timed['train_loss']})
    return rows[::-1]  # full tokens first


def format_search(s: Dict[str, Any]) -> str:
    c = s['config']
    return '\n'.join([
        f"search slice: {c['image_size']} px, repeat {c['repeat']}, NTK batch {c['batch_size']}, "
        f"{s['steps']} steps on {c['device']} ({s['wall_s']:.1f} s with the final measure)",
        f"  step 1 (warm-up included)   {s['first_step_s']:8.3f} s",
        f"  steps 2-{s['steps']}: median          {s['median_step_s']:8.3f} s/step (mean {s['mean_step_s']:.3f})",
        *(f"    {name} over {c['repeat']} copies    {t:8.3f} s" for name, t in s['median_measure_s'].items()),
        f"  {PAPER_SEARCH_STEPS} steps, extrapolated     {s['full_search_h'] * 60:8.1f} min",
    ])


def format_train(rows: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    full = rows[0]
    compiled = '' if args.compile is None else f', torch.compile ({args.compile})'
    lines = [f'{args.model} at {args.train_size} px, synthetic data, amp {args.amp}{compiled}, batch '
             f'{args.batch_size}, {args.train_steps} timed steps per setting',
             f"{'tokenizer':>9} {'tokens':>6} {'GMACs/img':>10} {'images/s':>9} {'vs full':>8} "
             f"{'peak GiB':>9} {'vs full':>8}"]
    for r in rows:
        peak = '-' if r['peak_gib'] is None else f"{r['peak_gib']:.2f}"
        peak_ratio = '-' if r['peak_gib'] is None else f"{r['peak_gib'] / full['peak_gib']:.2f}x"
        lines.append(f"{r['tokenizer']:>9} {r['tokens']:6d} {r['gmacs_per_image']:10.3f} {r['images_per_s']:9.1f} "
                     f"{r['images_per_s'] / full['images_per_s']:7.2f}x {peak:>9} {peak_ratio:>8}")
    return '\n'.join(lines)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', default='runs/bench_gpu', help='folder of the runs and results.json '
                        '(default: runs/bench_gpu)')
    parser.add_argument('--device', default='cuda',
                        help='cuda (default), cuda:N or cpu (cpu: a quick trial of the script)')
    parser.add_argument('--parts', default='search,train', help='comma-separated: search, train (default: both)')
    parser.add_argument('--search-steps', type=int, default=12,
                        help='search steps to run, at least 2: step 1 is reported apart (default: 12)')
    parser.add_argument('--search-size', type=int, default=224, help='search image size (default: 224)')
    parser.add_argument('--repeat', type=int, default=5, help='copies measured per network (default: 5)')
    parser.add_argument('--ntk-batch', type=int, default=16, help='NTK batch size of the search (default: 16)')
    parser.add_argument('--model', default='asvit_small', help='variant or genotype trained (default: asvit_small)')
    parser.add_argument('--train-size', type=int, default=224, help='training image size (default: 224)')
    parser.add_argument('--train-steps', type=int, default=30, help='timed steps per setting (default: 30)')
    parser.add_argument('--batch-size', type=int, default=128, help='training batch size (default: 128)')
    parser.add_argument('--amp', default='bf16', choices=('bf16', 'fp16', 'none'),
                        help='autocast dtype of training (default: bf16)')
    parser.add_argument('--compile', metavar='BACKEND', help="train through torch.compile with this backend, e.g. "
                                                             "'inductor' (default: eager)")
    parser.add_argument('--progress', action='store_true', help='progress bars')
    args = parser.parse_args(argv)
    # each part: (its config from the options, checked before anything runs; the run; the table)
    parts_known: Dict[str, Tuple[Callable[[argparse.Namespace], Any], Callable[..., Any], Callable[[Any], str]]] = {
        'search': (search_config, search_slice, format_search),
        'train': (train_config, train_settings, lambda rows: format_train(rows, args)),
    }
    parts = [p.strip() for p in args.parts.split(',')]
    unknown = [p for p in parts if p not in parts_known]
    if unknown:
        parser.error(f'--parts: unknown part(s) {", ".join(unknown)}; choose from {", ".join(parts_known)}')
    if 'search' in parts and args.search_steps < 2:
        parser.error(f'--search-steps must be at least 2 (step 1 carries the warm-up and is reported apart from '
                     f'the median of steps 2-N), got {args.search_steps}')
    for option, value in (('--train-steps', args.train_steps), ('--batch-size', args.batch_size)):
        if 'train' in parts and value < 1:
            parser.error(f'{option} must be at least 1, got {value}')
    try:
        device = resolve_device(args.device)
        if args.compile is not None:
            check_compile_backend(args.compile, '--compile')
        configs = {part: parts_known[part][0](args) for part in parts}
    except ValueError as e:
        parser.error(str(e))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    results: Dict[str, Any] = {'device': name, 'torch': torch.__version__, 'compile': args.compile}
    print(f'device: {name}, torch {torch.__version__}', flush=True)
    for part in parts:
        _, run, render = parts_known[part]
        results[part] = run(configs[part], args, output)
        write_json(output / 'results.json', results)  # after each part: a later failure keeps what was measured
        print(render(results[part]), flush=True)
    print(f'-> {output}/results.json')
    return 0


if __name__ == '__main__':
    sys.exit(main())
