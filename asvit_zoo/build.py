"""The main job: regenerate a zoo in one command (``asvit build``).

Stages, in order, each a library call:

1. ``search``: REINFORCE seed search with training-free rewards (:func:`asvit_zoo.search.search`);
2. ``scale``: greedy depth/width scaling of that seed to the preset's parameter budgets, one registry card per
   budget (:func:`asvit_zoo.scaling.run_scaling`, :func:`~asvit_zoo.scaling.write_variant_cards`);
3. ``train``: each variant trained with the preset's recipe and re-tokenization schedule
   (:func:`asvit_zoo.train.train`; DDP under torchrun);
4. ``export``: the trained weights as ``<variant>.<tag>`` Hub folders of the build's registry
   (:func:`asvit_zoo.hub.export_weights`);
5. ``evaluate``: each export scored on the test split (:func:`asvit_zoo.evaluation.evaluate_pretrained`);
6. ``report``: ``report.md`` with a results table and the PNGs of the run.

A preset is a JSON file (:data:`PRESETS` ships ``fmnist-cpu`` and ``imagenet-paper``). Every stage records
the fingerprint of its inputs in ``stages.json`` when it completes; a later build with the same inputs skips
it, and a stage that was interrupted continues from its own checkpoint (search ``state.pt``, scaling
``trajectory.json``, trainer ``last.pth.tar``), so a killed build picks up where it stopped and ends with
the results of an uninterrupted one. A stage also records its inputs when it starts, so work it left under other
inputs is not continued. A stage whose inputs changed is run again from scratch; a later stage
runs again where its own inputs changed with it: each stage's inputs hold what it uses of the earlier ones (the
seed genotype, a variant's genotype, the trained checkpoint's outputs, the exported weights' sha256). Variants
that a changed preset no longer names leave the build: their registry folders, training runs and records. A
scaling stage that runs again writes new cards and removes the earlier exports (a variant may keep its name and
change its genotype); an export under a new tag replaces the one under the earlier tag. Only what the build
recorded making is removed: other folders under ``registry/`` and ``train/`` stay.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .cost import count_macs, param_count
from .fileio import check_folder, new_figure, read_json, save_figure, write_json, write_text

__all__ = ['STAGES', 'PRESETS', 'BuildPreset', 'load_preset', 'build']

PathLike = Union[str, os.PathLike]
STAGES = ('search', 'scale', 'train', 'export', 'evaluate', 'report')
PRESETS = ('fmnist-cpu', 'imagenet-paper')
STAGES_FILE = 'stages.json'
PRESET_FILE = 'preset.json'  # the preset a build ran, in its folder
REPORT_FILE = 'report.md'
ACCURACY_PLOT = 'accuracy.png'


@dataclass(frozen=True)
class BuildPreset:
    """What a build makes: the settings of each stage (keyword arguments of the library's configs)."""

    name: str
    search: Mapping[str, Any]  # SearchConfig fields
    scale: Mapping[str, Any]  # ScalingConfig fields (not seed_genotype) and ``names``, one per budget
    train: Mapping[str, Any]  # TrainConfig fields (not model/genotype)
    tag: str = 'fmnist'  # pretrained tag of the exported weights
    evaluate: Mapping[str, Any] = field(default_factory=dict)  # evaluate_pretrained options (batch_size, subset)
    description: str = ''

    def __post_init__(self) -> None:
        from .evaluation import check_options, evaluate_pretrained
        from .registry import check_tag
        from .scaling import ScalingConfig, check_variant_names
        from .search import SearchConfig, search_space_extreme
        from .train import SYNTHETIC, TrainConfig

        for section in ('search', 'scale', 'train', 'evaluate'):
            if not isinstance(getattr(self, section), Mapping):
                raise ValueError(f'preset {self.name}: {section} must be an object of settings, got '
                                 f'{getattr(self, section)!r}')
        for section, own in (('train', ('model', 'genotype', 'pretrained')), ('scale', ('seed_genotype',)),
                             ('evaluate', ('model', 'ema'))):
            unknown = sorted(set(getattr(self, section)) & set(own))
            if unknown:
                raise ValueError(f'preset {self.name}: {section} must not set {unknown} (the build searches, trains, '
                                 f'exports and scores its own variants)')
        parameters = inspect.signature(evaluate_pretrained).parameters
        options = set(parameters) - {'model', 'ema'}
        unknown = sorted(set(self.evaluate) - options)
        if unknown:
            raise ValueError(f'preset {self.name}: unknown evaluate setting(s) {unknown}; known: {sorted(options)}')
        evaluate = {name: parameters[name].default for name in options} | self.evaluation_options()
        if 'data' not in self.evaluate and self.train.get('data') == SYNTHETIC:
            defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
            drawn = {k: v for k, v in self.train.items() if (k.startswith(f'{SYNTHETIC}_') or k == 'seed')
                     and k in defaults and v != defaults[k]}
            if drawn:
                raise ValueError(f'preset {self.name}: evaluate: the exports would be scored on {SYNTHETIC} data drawn '
                                 f"with the trainer's defaults, but train sets {drawn}; keep the defaults or set "
                                 f'evaluate.data')
        names = self.scale.get('names') or []
        if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            raise ValueError(f'preset {self.name}: scale: names must be a list of variant names, got {names!r}')
        budgets = self.scale.get('budgets', ScalingConfig.budgets)
        # the devices of search and scaling are checked when they run: a preset may name a GPU this machine lacks;
        # the budgets, against the seed whose first scaling network is the largest: they suit any searched seed
        largest_seed = str(search_space_extreme(largest=True))
        for section, check in (('search', lambda: SearchConfig(**dict(self.search, device='cpu'))),
                               ('scale', lambda: ScalingConfig(seed_genotype=largest_seed,
                                                               **dict(self._scaling_kwargs(), device='cpu'))),
                               ('scale', lambda: check_variant_names(names, list(budgets))),
                               ('train', lambda: TrainConfig(**self.train)),
                               ('evaluate', lambda: check_options(**evaluate)),
                               ('tag', lambda: check_tag(self.tag))):
            try:
                check()
            except (TypeError, ValueError) as e:  # unknown keys are TypeErrors of the dataclass
                raise ValueError(f'preset {self.name}: {section}: {e}') from None

    def _scaling_kwargs(self) -> Dict[str, Any]:
        """The scale settings as ScalingConfig takes them: counts as floats (JSON writes 2.5e6 as 2500000)."""
        def number(value: Any) -> Any:
            return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

        kwargs = {k: v for k, v in self.scale.items() if k != 'names'}
        if isinstance(kwargs.get('budgets'), list):
            kwargs['budgets'] = tuple(number(b) for b in kwargs['budgets'])
        for key in ('upper_limit', 'lower_bound'):
            if key in kwargs:
                kwargs[key] = number(kwargs[key])
        return kwargs

    def evaluation_options(self) -> Dict[str, Any]:
        """The settings of the exports' evaluation: ``evaluate``'s, on the test split of the training data unless
        it names its own."""
        options = dict(self.evaluate)
        if 'data' not in options:
            options.update({key: self.train[key] for key in ('data', 'data_root') if key in self.train})
        return options

    def with_data(self, data: str) -> 'BuildPreset':
        """The preset with every stage on ``data`` (fashion-mnist, or an ImageFolder root)."""
        from .train import FASHION_MNIST

        if data != FASHION_MNIST and not (data and Path(data).is_dir()):
            raise ValueError(f'data must be {FASHION_MNIST!r} or an ImageFolder root (an existing folder), got '
                             f'{data!r}')

        def on_data(settings: Mapping[str, Any]) -> Dict[str, Any]:  # a Fashion-MNIST folder goes with its data
            return {**{k: v for k, v in settings.items() if data == FASHION_MNIST or k != 'data_root'}, 'data': data}

        return dataclasses.replace(self, search=dict(self.search, data=data), scale=dict(self.scale, data=data),
                                   train=on_data(self.train), evaluate=on_data(self.evaluate))

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_preset(name_or_path: PathLike) -> BuildPreset:
    """A shipped preset by name (:data:`PRESETS`) or a preset JSON file."""
    path = Path(name_or_path)
    if not path.is_file():
        if str(name_or_path) not in PRESETS:
            raise FileNotFoundError(f'preset {str(name_or_path)!r} is neither a shipped preset ({", ".join(PRESETS)}) '
                                    f'nor a JSON file')
        path = Path(str(resources.files('asvit_zoo.presets') / f'{name_or_path}.json'))
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: not valid JSON: {e}') from None
    if not isinstance(data, dict):
        raise ValueError(f'{path}: a preset is a JSON object of fields, got {type(data).__name__}')
    data = {k: v for k, v in data.items() if not k.startswith('_')}
    fields = dataclasses.fields(BuildPreset)
    known = {f.name for f in fields}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f'{path}: unknown preset field(s) {unknown}; allowed: {sorted(known)}')
    missing = [f.name for f in fields if f.name != 'name' and f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f'{path}: missing preset field(s) {missing}')
    data.setdefault('name', path.stem)
    return BuildPreset(**data)


# --------------------------------------------------------------------------- stage bookkeeping
def _fingerprint(inputs: Any) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Stages:
    """``stages.json``: the inputs fingerprint and outputs of each completed stage, and the inputs fingerprint of
    a stage that started and has not completed (no ``outputs``)."""

    def __init__(self, folder: Path, writer: bool = True):
        self.path = folder / STAGES_FILE
        self.writer = writer  # under torchrun only rank 0 writes
        self.done: Dict[str, Dict[str, Any]] = read_json(self.path) if self.path.is_file() else {}
        if not (isinstance(self.done, dict) and all(isinstance(record, dict) and isinstance(
                record.get('fingerprint'), str) and isinstance(record.get('outputs', {}), dict)
                for record in self.done.values())):
            raise ValueError(f'{self.path}: damaged, not a record of build stages; delete it (every stage then runs '
                             f'again), or start again in a new folder')

    def outputs(self, stage: str, inputs: Any) -> Optional[Dict[str, Any]]:
        """The recorded outputs of ``stage`` if it completed with these inputs."""
        record = self.done.get(stage)
        if record is not None and 'outputs' in record and record['fingerprint'] == _fingerprint(inputs):
            return record['outputs']
        return None

    def start(self, stage: str, inputs: Any) -> bool:
        """Record that ``stage`` starts with ``inputs``; whether its interrupted work may be continued: the stage, if
        it started before, started with the same inputs (they hold what it uses of the earlier stages' outputs)."""
        record = self.done.get(stage)
        fingerprint = _fingerprint(inputs)
        resumable = record is None or record['fingerprint'] == fingerprint
        self.done[stage] = {'fingerprint': fingerprint}
        if self.writer:
            write_json(self.path, self.done)
        return resumable

    def variants(self) -> List[str]:
        """The variants earlier builds in this folder made: named by the scaling stage or a per-variant stage."""
        scaled = (self.done.get('scale') or {}).get('outputs', {}).get('variants', [])
        names = {v['name'] for v in scaled} | {key.split('/', 1)[1] for key in self.done if '/' in key}
        return sorted(names)

    def forget(self, names: Sequence[str], stages: Sequence[str] = ('train', 'export', 'evaluate')) -> None:
        """Forget the per-variant ``stages`` (``train/NAME`` ...) of the variants ``names``."""
        stale = [key for key in self.done if '/' in key and tuple(key.split('/', 1)) in
                 {(stage, name) for stage in stages for name in names}]
        for key in stale:
            del self.done[key]
        if stale and self.writer:
            write_json(self.path, self.done)

    def complete(self, stage: str, inputs: Any, outputs: Dict[str, Any], seconds: float) -> Dict[str, Any]:
        self.done[stage] = {'fingerprint': _fingerprint(inputs), 'outputs': outputs, 'seconds': seconds}
        if self.writer:
            write_json(self.path, self.done)
        return outputs


def _remove_exports(registry: Path, name: str, keep: Optional[str] = None) -> None:
    """Remove the exports ``registry/NAME.*`` of a variant, but ``keep`` (a folder name)."""
    for path in registry.glob(f'{name}.*') if registry.is_dir() else []:
        if path.is_dir() and path.name != keep:
            shutil.rmtree(path)


def _remove_variant(folder: Path, name: str) -> None:
    """Remove a variant the build made: its registry card and exports and its training run."""
    _remove_exports(folder / 'registry', name)
    for path in (folder / 'registry' / name, folder / 'train' / name):
        if path.is_dir():
            shutil.rmtree(path)


def _fresh(folder: Path, resumable: bool) -> bool:
    """Whether a stage folder's partial work can be continued; stale work (other inputs) is removed."""
    if folder.exists() and not resumable:
        shutil.rmtree(folder)
    return folder.exists()


# --------------------------------------------------------------------------- the stages
def _search(preset: BuildPreset, folder: Path, resume: bool, progress: bool) -> Dict[str, Any]:
    from .search import SearchConfig, search

    out = folder / 'search'
    result = search(SearchConfig(**preset.search), out, resume=_fresh(out, resume), progress=progress)
    return {'seed_genotype': str(result.genotype), 'measures': result.summary['measures'],
            'wall_seconds': result.summary['wall_seconds']}


def _command(preset: BuildPreset, folder: Path) -> str:
    """The command that regenerates a build: a shipped preset by its name, any other by the build's copy."""
    shipped = preset.name in PRESETS and load_preset(preset.name) == preset
    source = preset.name if shipped else str(folder / PRESET_FILE)
    return shlex.join(['asvit', 'build', '--preset', source, '--out', str(folder)])


def _scale(preset: BuildPreset, folder: Path, seed: str, resume: bool, progress: bool) -> Dict[str, Any]:
    from .scaling import ScalingConfig, plot_trajectory, run_scaling, select_variants, write_variant_cards

    out = folder / 'scale'
    config = ScalingConfig(seed_genotype=seed, **preset._scaling_kwargs())
    steps = run_scaling(config, out, resume=_fresh(out, resume), progress=progress)
    plot_trajectory(steps, config.budgets, out / 'trajectory.png')
    variants = select_variants(seed, steps, config.budgets)
    write_json(out / 'variants.json', variants)
    registry = folder / 'registry'
    write_variant_cards(registry, preset.scale['names'], config, steps, _command(preset, folder))
    return {'variants': [dict(v, name=name) for name, v in zip(preset.scale['names'], variants)]}


def _train(preset: BuildPreset, folder: Path, variant: Dict[str, Any], resume: bool,
           progress: bool) -> Dict[str, Any]:
    from .train import TrainConfig, train

    out = folder / 'train' / variant['name']
    cfg = TrainConfig(**dict(preset.train, model='asvit', genotype=variant['genotype']))
    resumable = resume and (out / 'last.pth.tar').is_file()
    result = train(cfg, out, resume=_fresh(out, resumable), progress=progress)
    final = result.final
    model = result.model
    in_chans, size = int(model.patch_embed.proj.in_channels), cfg.img_size
    return {'checkpoint': str((out / 'last.pth.tar').relative_to(folder)), 'params': param_count(model),
            'gmacs': count_macs(model, (in_chans, size, size)) / 1e9, 'img_size': size,
            'top1': final['eval_top1'], 'top5': final['eval_top5'], 'train_macs': final['train_macs'],
            'train_macs_full': final['train_macs_full'], 'train_time': final['train_time'],
            'schedule': cfg.retokenization}


def _export(preset: BuildPreset, folder: Path, name: str, checkpoint: str) -> Dict[str, Any]:
    from .hub import export_weights
    from .registry import tagged_name

    registry = folder / 'registry'
    _remove_exports(registry, name, keep=tagged_name(name, preset.tag))  # an export under an earlier tag
    card = export_weights(folder / checkpoint, name, preset.tag, root=registry)
    return {'folder': str(card.path.relative_to(folder)), 'sha256': card.config['weights']['sha256']}


def _evaluate(preset: BuildPreset, export_folder: str) -> Dict[str, Any]:
    from .evaluation import evaluate_pretrained

    result = evaluate_pretrained(f'local-dir:{export_folder}', **preset.evaluation_options())
    return {k: result[k] for k in ('top1', 'top5', 'loss', 'images')}


# --------------------------------------------------------------------------- report
def _plot_accuracy(folder: Path, names: Sequence[str], path: Path) -> None:
    from .train import METRICS, read_metrics

    fig = new_figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for name in names:
        records = read_metrics(folder / 'train' / name / METRICS)
        ax.plot([r['epoch'] + 1 for r in records], [r['eval_top1'] for r in records], marker='o', label=name)
    ax.set_xlabel('epoch')
    ax.set_ylabel('test top-1 (%)')
    ax.set_title('Accuracy during training')
    ax.grid(alpha=.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The report's results table (markdown)."""
    from .registry import code_cell

    lines = ['| variant | genotype | params (M) | GMACs | top-1 % | top-5 % | training TMACs | vs full tokens '
             '| train time (s) |', '|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        lines.append(f"| {r['name']}.{r['tag']} | {code_cell(r['genotype'])} | {r['params'] / 1e6:.2f} | "
                     f"{r['gmacs']:.4f} | {r['top1']:.2f} | {r['top5']:.2f} | {r['train_macs'] / 1e12:.2f} | "
                     f"{r['train_macs'] / r['train_macs_full']:.1%} | {r['train_time']:.0f} |")
    return '\n'.join(lines)


def _report(preset: BuildPreset, folder: Path, search: Mapping[str, Any], scale: Mapping[str, Any],
            rows: List[Dict[str, Any]], seconds: Mapping[str, float]) -> str:
    names = [r['name'] for r in rows]
    _plot_accuracy(folder, names, folder / ACCURACY_PLOT)
    stage_lines = '\n'.join(f'| {stage} | {s:.0f} |' for stage, s in seconds.items())
    schedule = rows[0]['schedule'] if rows else ''
    variants = '\n'.join(f"- `{v['name']}`: budget {v['budget'] / 1e6:.2f}M, scaling step {v['step']}, "
                         f"`{v['genotype']}` ({v['params'] / 1e6:.2f}M parameters at 1000 classes)"
                         for v in scale['variants'])
    text = f"""# asvit build: {preset.name}

{preset.description}

## Results

{results_table(rows)}

Accuracy is that of the exported weights, re-scored by `asvit eval` on the test split. Parameters and GMACs are
those of the trained networks at {rows[0]['img_size'] if rows else '?'}x{rows[0]['img_size'] if rows else '?'} input;
training MACs are counted per step at the tokenizer setting of that step (forward pass).

Load a variant: `ASVIT_ZOO_REGISTRY={folder / 'registry'}` in the environment, then
`timm.create_model('{names[0] if names else 'NAME'}.{preset.tag}', pretrained=True)` after `import asvit_zoo`
(or `timm.create_model('local-dir:{folder / 'registry'}/NAME.{preset.tag}', pretrained=True)`).

![accuracy]({ACCURACY_PLOT})

## Seed search

Seed `{search['seed_genotype']}`, measures {json.dumps(search['measures'])}, {search['wall_seconds']:.0f} s.

![search](search/curves.png)

## Scaling

{variants}

![scaling](scale/trajectory.png)

## Progressive re-tokenization

Schedule `{schedule}` (fraction:stride:dilation).

![schedule](train/{names[0] if names else ''}/schedule.png)

## Wall time per stage (s)

| stage | seconds |
|---|---:|
{stage_lines}
"""
    write_text(folder / REPORT_FILE, text)
    return str(folder / REPORT_FILE)


# --------------------------------------------------------------------------- the build
def build(preset: BuildPreset, folder: PathLike, until: Optional[str] = None,
          progress: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the stages of ``preset`` into ``folder`` up to ``until`` (default: all), skipping completed ones.

    Under torchrun only the training stage runs on every process (DDP); the others must have completed
    before (a build with ``until='scale'`` on one process), and only rank 0 exports, evaluates and reports.
    """
    if until is not None and until not in STAGES:
        raise ValueError(f'until must be one of {", ".join(STAGES)}, got {until!r}')
    folder = check_folder(folder, 'build folder')
    folder.mkdir(parents=True, exist_ok=True)
    rank, world = int(os.environ.get('RANK', '0')), int(os.environ.get('WORLD_SIZE', '1'))
    stages = _Stages(folder, writer=rank == 0)
    last = STAGES.index(until) if until else len(STAGES) - 1
    outputs: Dict[str, Any] = {}

    def run(stage: str, inputs: Any, fn: Callable[[bool], Dict[str, Any]], key: Optional[str] = None) -> Dict[str, Any]:
        """Stage ``key`` (default ``stage``): its recorded outputs, or ``fn(resume)``'s, recorded."""
        key = key or stage
        done = stages.outputs(key, inputs)
        if done is not None:
            log(f'[{key}] done before (same inputs): skipped')
            return done
        if world > 1 and stage != 'train':
            raise RuntimeError(f'stage {key} runs on one process: run `asvit build ... --until scale` without '
                               f'torchrun first, then train under torchrun')
        log(f'[{key}] running')
        if rank == 0:  # what the folder holds now comes from this preset (the cards' command names this copy)
            write_json(folder / PRESET_FILE, preset.to_dict())
        resume = stages.start(key, inputs)
        start = time.perf_counter()
        result = fn(resume)
        seconds = time.perf_counter() - start
        log(f'[{key}] finished in {seconds:.0f}s')
        return stages.complete(key, inputs, result, seconds)

    search_in = {'search': preset.search}
    outputs['search'] = run('search', search_in, lambda resume: _search(preset, folder, resume, progress))
    made = stages.variants()

    def scale(resume: bool) -> Dict[str, Any]:  # new cards: earlier exports go (their genotypes may change)
        stages.forget(made, ('export', 'evaluate'))
        for name in made:
            _remove_exports(folder / 'registry', name)
        return _scale(preset, folder, outputs['search']['seed_genotype'], resume, progress)

    if last >= STAGES.index('scale'):
        scale_in = {'scale': preset.scale, 'seed': outputs['search']['seed_genotype']}
        outputs['scale'] = run('scale', scale_in, scale)
    if 'scale' in outputs and rank == 0:  # variants of an earlier preset leave the build
        names = [variant['name'] for variant in outputs['scale']['variants']]
        gone = [name for name in made if name not in names]
        stages.forget(gone)
        for name in gone:
            _remove_variant(folder, name)
    rows: List[Dict[str, Any]] = []
    for variant in outputs.get('scale', {}).get('variants', []) if last >= STAGES.index('train') else []:
        name = variant['name']
        train_in = {'train': preset.train, 'genotype': variant['genotype']}
        trained = run('train', train_in, lambda resume: _train(preset, folder, variant, resume, progress),
                      key=f'train/{name}')
        if rank != 0 or last < STAGES.index('export'):
            continue
        export_in = {'tag': preset.tag, 'trained': trained}
        exported = run('export', export_in, lambda _: _export(preset, folder, name, trained['checkpoint']),
                       key=f'export/{name}')
        row = dict(name=name, tag=preset.tag, genotype=variant['genotype'], **trained)
        if last >= STAGES.index('evaluate'):
            eval_in = {'evaluate': preset.evaluate, 'sha256': exported['sha256']}
            scored = run('evaluate', eval_in, lambda _: _evaluate(preset, str(folder / exported['folder'])),
                         key=f'evaluate/{name}')
            row.update(top1=scored['top1'], top5=scored['top5'], trainer_top1=trained['top1'])
        rows.append(row)
    if rank == 0 and last >= STAGES.index('report'):
        seconds = {stage: record['seconds'] for stage, record in stages.done.items() if 'outputs' in record}
        report = _report(preset, folder, outputs['search'], outputs['scale'], rows, seconds)
        log(f'[report] {report}')
        outputs['report'] = report
    outputs['rows'] = rows
    return outputs
