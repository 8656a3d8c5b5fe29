"""Greedy scaling: candidate generation, ranking and tie-break, resume, and card regeneration."""
import json
import re
import shlex
import shutil

import pytest

from asvit_zoo.cli import main
from asvit_zoo.cost import genotype_params
from asvit_zoo.genotype import PAPER_SEED, Genotype
from asvit_zoo.registry import load_card
from asvit_zoo.scaling import (
    Candidate, ScalingConfig, _candidates, _choose, _dense_ranks, _fit_width, load_trajectory, run_scaling,
    select_variants, TRAJECTORY_FILE)
from conftest import torchrun

SEED = Genotype.parse(PAPER_SEED)
TINY = dict(budgets=(2.6e6,), upper_limit=4e6, image_size=16, batch_size=2, data='noise')


def test_candidates_keep_the_noop_width_and_respect_the_upper_limit():
    cands = _candidates(SEED, (1, 1, 1, 1), 8, upper_limit=1e9)
    assert sorted({c.width for c in cands}) == [8, 9, 10]  # round(8 * 1.05) == 8 kept; 9 appears once
    assert {c.depths for c in cands} == {(2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 1), (1, 1, 1, 2)}
    capped = _candidates(SEED, (1, 1, 1, 1), 8, upper_limit=3.0e6)
    assert capped and all(c.real_params <= 3.0e6 for c in capped) and len(capped) < len(cands)
    assert _candidates(SEED, (1, 1, 1, 1), 8, upper_limit=1e5) == []
    # real widths past the 1024-channel cap would build the network of 1024: not candidates
    assert sorted({c.width for c in _candidates(SEED, (1, 1, 1, 1), 240, upper_limit=1e12)}) == [252]


def test_dense_ranks():
    assert _dense_ranks([3., 1., 3., 2.], descending=False) == [3, 1, 3, 2]
    assert _dense_ranks([3., 1., 3., float('nan')], descending=True) == [1, 2, 1, 3]


def test_choose_by_rank_sum_and_tie_break_takes_the_better_value():
    a = Candidate((2, 1, 1, 1), 8, 0, ntk=1.0, exp=0.5)
    b = Candidate((1, 2, 1, 1), 8, 0, ntk=2.0, exp=0.9)
    c = Candidate((1, 1, 2, 1), 8, 0, ntk=3.0, exp=0.1)
    # a: ntk 1 + exp 2 = 3; b: 2 + 1 = 3; c: 3 + 3 = 6. Tie a/b; exp's relative range (0.89) > ntk's (0.67):
    # the larger exp wins (the reference would take the smaller one).
    assert _choose([a, b, c]) is b
    assert (a.rank_sum, b.rank_sum, c.rank_sum) == (3, 3, 6)
    bad = Candidate((1, 1, 1, 2), 8, 0, ntk=float('nan'), exp=10.0, bad=True)
    assert _choose([a, bad]) is a and a.rank_sum == bad.rank_sum  # a bad network is never chosen over a good one


def test_resume_gives_the_same_trajectory(tmp_path):
    config = ScalingConfig(PAPER_SEED, **TINY)
    full = run_scaling(config, tmp_path / 'full', resume=True)  # nothing to resume: the run starts
    assert len(full) >= 2 and full[-1].params >= 2.6e6 and full[0].step == 0
    saved = load_trajectory(tmp_path / 'full')
    partial = tmp_path / 'partial'
    partial.mkdir()
    (partial / TRAJECTORY_FILE).write_text(json.dumps({**saved, 'done': False, 'steps': saved['steps'][:1]}))
    with pytest.raises(FileExistsError, match='pass resume=True'):
        run_scaling(config, partial)
    resumed = run_scaling(config, partial, resume=True)
    strip = lambda steps: [{**s.__dict__, 'seconds': 0} for s in steps]  # noqa: E731
    assert strip(resumed) == strip(full)
    with pytest.raises(ValueError, match=rf'^{re.escape(str(partial / TRAJECTORY_FILE))} was written with other '
                                         rf'settings \(image_size: saved {TINY["image_size"]}, given 32\); resume it '
                                         r'with the same options$'):
        run_scaling(ScalingConfig(PAPER_SEED, **{**TINY, 'image_size': 32}), partial, resume=True)
    edited = [dict(saved['steps'][0]), dict(saved['steps'][1])]  # hand-edited: a field lost, a candidate's renamed
    del edited[0]['ntk']
    edited[1]['candidates'] = [dict(c, nkt=c['ntk']) for c in edited[1]['candidates']]
    for steps, problem in ((edited[:1], "step 0 lacks the fields ['ntk']"),
                           ([saved['steps'][0], edited[1]], "step 1, candidate 0 has unknown fields ['nkt']"),
                           ({'0': saved['steps'][0]}, '"steps" must be a list, got dict')):
        (partial / TRAJECTORY_FILE).write_text(json.dumps({**saved, 'done': False, 'steps': steps}))
        with pytest.raises(ValueError, match=f'^{re.escape(f"{partial / TRAJECTORY_FILE}: {problem}")}; delete it, '
                                             f'or start again in a new folder$'):
            run_scaling(config, partial, resume=True)
    for damaged in ([], {**saved, 'config': 'x'}):  # valid JSON of the wrong shape
        (partial / TRAJECTORY_FILE).write_text(json.dumps(damaged))
        with pytest.raises(ValueError, match=f'^{re.escape(str(partial / TRAJECTORY_FILE))}: not a scaling trajectory '
                                             r'\(an object with "config", "done" and "steps"\); delete it'):
            run_scaling(config, partial, resume=True)
    variant, = select_variants(PAPER_SEED, full, (2.6e6,))
    assert abs(variant['params'] - 2.6e6) / 2.6e6 < 0.03
    largest = full[-1].params  # a budget just above the trajectory's largest step: the message tells them apart
    with pytest.raises(ValueError, match=f'budget of {largest + 1:,} parameters .its largest step has {largest:,}.: '
                                         'scaling stops where every next candidate exceeds upper_limit'):
        select_variants(PAPER_SEED, full, (largest + 1,))


def test_the_largest_seed_runs(tmp_path, monkeypatch):  # each measure's seed is derived from it, in range
    import asvit_zoo.scaling as scaling

    seeds, measure = [], scaling.measure_genotype
    monkeypatch.setattr(scaling, 'measure_genotype',
                        lambda *args, seed, **kwargs: seeds.append(seed) or measure(*args, seed=seed, **kwargs))
    steps = run_scaling(ScalingConfig(PAPER_SEED, **{**TINY, 'seed': 2 ** 32 - 1}), tmp_path / 'run', progress=False)
    assert len(steps) >= 2 and seeds and all(0 <= s <= 2 ** 32 - 1 for s in seeds)
    assert sorted(set(seeds)) == sorted({((2 ** 32 - 1) * 100_003 + s.step) % 2 ** 32 for s in steps})


def test_recorded_command_regenerates_the_card(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ['scale', '--seed', PAPER_SEED, '--budgets', '2.6M', '--names', 'asvit_tiny', '--upper-limit', '4M',
            '--image-size', '16', '--batch-size', '2', '--data', 'noise', '--out', 'run', '--registry', 'reg']
    assert main(argv) == 0
    card = load_card(tmp_path / 'reg' / 'asvit_tiny')
    first = {p.name: p.read_bytes() for p in (tmp_path / 'reg' / 'asvit_tiny').iterdir()}
    assert (tmp_path / 'run' / 'trajectory.png').stat().st_size > 0
    provenance = card.config['provenance']
    assert provenance['seed_genotype'] == PAPER_SEED and provenance['measure_image_size'] == 16
    command = shlex.split(provenance['command'])
    assert command[:2] == ['asvit', 'scale']
    shutil.rmtree(tmp_path / 'run')
    shutil.rmtree(tmp_path / 'reg')
    assert main(command[1:]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / 'reg' / 'asvit_tiny').iterdir()} == first
    assert main(command[1:]) == 2  # the run folder exists now: refused without --resume
    assert 'pass resume=True (--resume)' in capsys.readouterr().err


@pytest.mark.parametrize('values, message', [
    (dict(budgets=()), r'budgets must be a non-empty list of finite numbers > 0, got \(\)'),
    (dict(budgets=(3e6, -1.0)), r'budgets must be a non-empty list of finite numbers > 0, got \(3000000.0, -1.0\)'),
    (dict(budgets=(float('nan'),)), r'budgets must be a non-empty list of finite numbers > 0, got \(nan,\)'),
    (dict(budgets=(2.6e6, 2.6e6)), r'budgets must be distinct \(equal budgets give the same variant\), got '
                                   r'\(2600000.0, 2600000.0\)'),
    (dict(lower_bound=0), 'lower_bound must be a finite number > 0 or unset, got 0'),
    (dict(lower_bound=2e6, budgets=(3e6,)),
     'lower_bound 2e[+]06 is below the largest budget 3e[+]06: scaling would stop before reaching it'),
    (dict(image_size=32.0), 'image_size must be an integer >= 1, got 32.0'),
    (dict(budgets=(2e6, 3e6)), re.escape(f'budgets must be at least 2,319,624, the parameters of the first network '
                                         f'of the scaling (seed {PAPER_SEED} at depths [1, 1, 1, 1] and width 32), '
                                         f'got 2,000,000')),
    (dict(seed_genotype=None), 'seed_genotype must be a string, got None'),
])
def test_settings_are_checked(values, message):
    with pytest.raises(ValueError, match=f'^{message}$'):
        ScalingConfig(**{'seed_genotype': PAPER_SEED, **values})


@pytest.mark.parametrize('argv, message', [
    (['--budgets', '-3M'], '--budgets must be a positive count'),
    (['--budgets', '200M'], 'exceeds upper_limit'),
    (['--registry', 'reg'], '--registry needs --names'),
    (['--seed', '8,2,3,1|4,1,2,1|4,1,4,1|4,1,6,1|32,32'], 'seed genotype must be in the seed form'),
    (['--budgets', '1e9999'], '--budgets must be a positive count'),
    (['--device', 'tpu'], "device 'tpu' is not a torch device; use cpu, cuda or cuda:N"),
    (['--budgets', '3M,4M', '--names', 'good,bad-name', '--registry', 'reg'],
     "variant names must be model names (a letter, then letters, digits or \"_\"), got ['bad-name']"),
    (['--budgets', '3M,4M', '--names', 'same,same', '--registry', 'reg'], 'give one distinct name per budget'),
    (['--budgets', '3M', '--names', ''],
     'variant names must be model names (a letter, then letters, digits or "_"), got [\'\']'),
    (['--budgets', '3M', '--names', 'asvit_mine', '--registry', __file__],
     f'registry {__file__}: {__file__} exists and is not a folder'),
    (['--budgets', '3M,4M', '--names', 'asvit_mine,resnet50', '--registry', 'reg'],
     "architecture 'resnet50' is the name of a timm model that is not an As-ViT variant"),
    (['--random-seed', '-3'], 'seed must be an integer in [0, 4294967295], got -3'),
    (['--batch-size', '1'], 'batch_size must be an integer >= 2 (the NTK batch'),
    (['--repeat', '0'], 'repeat must be an integer >= 1, got 0'),
])
def test_cli_errors(tmp_path, capsys, argv, message):
    base = {'--seed': PAPER_SEED, '--out': str(tmp_path / 'run')}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    assert main(['scale', *[f'{flag}={value}' for flag, value in base.items()]]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()  # refused before any work


def test_fit_width_takes_the_width_nearest_the_budget():
    """Against every width from the smallest to the cap: the nearest parameter count wins, on either side."""
    depths = (1, 1, 2, 1)
    params = {w: genotype_params(SEED.scaled(depths, w)) for w in range(SEED.heads // 8, 97)}
    middle = (params[40] + params[41]) / 2
    for budget in (params[40] + 1, middle - 1, middle + 1, params[41] - 1, params[96] * 2, 1):
        nearest = min(params, key=lambda w: abs(params[w] - budget))
        assert _fit_width(SEED, depths, 96, budget) == nearest, budget


SHARED_CANDIDATES_SCRIPT = '''
import json, os
from asvit_zoo import scaling

calls = []
measure_genotype = scaling.measure_genotype


def counted(*args, distributed=False, **kwargs):
    calls.append(distributed)
    return measure_genotype(*args, distributed=distributed, **kwargs)


scaling.measure_genotype = counted
steps = scaling.run_scaling(scaling.ScalingConfig({seed!r}, **{tiny!r}), {run!r}, progress=False)
rank = int(os.environ['RANK'])
with open({out!r} + f'.{{rank}}.json', 'w') as f:  # one file per process: their stdout lines can interleave
    json.dump(dict(rank=rank, candidates_measured=calls.count(False),
                   steps=[[s.genotype, [[c.ntk, c.exp] for c in s.candidates]] for s in steps]), f)
'''


def test_torchrun_processes_share_the_candidates(tmp_path):
    script = tmp_path / 'share.py'
    script.write_text(SHARED_CANDIDATES_SCRIPT.format(seed=PAPER_SEED, tiny=TINY, run=str(tmp_path / 'two'),
                                                      out=str(tmp_path / 'rank')))
    proc = torchrun([str(script)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f'rank.{rank}.json').read_text()) for rank in (0, 1)]
    one = run_scaling(ScalingConfig(PAPER_SEED, **TINY), tmp_path / 'one', progress=False)
    total = sum(len(s.candidates) for s in one)
    assert total >= 8 and [r['candidates_measured'] for r in ranks] == [(total + 1) // 2, total // 2]
    assert ranks[0]['steps'] == ranks[1]['steps']  # every process has every candidate's measures
    assert [genotype for genotype, _ in ranks[0]['steps']] == [s.genotype for s in one]
    for (_, measured), step in zip(ranks[0]['steps'], one):
        expected = [value for c in step.candidates for value in (c.ntk, c.exp)]
        assert [value for pair in measured for value in pair] == pytest.approx(expected, rel=1e-6)
    saved = load_trajectory(tmp_path / 'two')
    assert saved['done'] and [s['genotype'] for s in saved['steps']] == [s.genotype for s in one]


def test_bad_networks_are_saved_as_standard_json_and_resumed(tmp_path):
    """Two identical images make every NTK Gram matrix singular: each network is bad, its NTK NaN. The trajectory
    and the cards hold null there (NaN is not JSON), and a resumed run reads it back as NaN."""
    import math

    from PIL import Image

    from asvit_zoo.scaling import write_variant_cards

    (tmp_path / 'same' / 'a').mkdir(parents=True)
    for i in range(2):
        Image.new('RGB', (32, 32), (120, 30, 200)).save(tmp_path / 'same' / 'a' / f'{i}.png')
    config = ScalingConfig(PAPER_SEED, **{**TINY, 'upper_limit': 3e6, 'data': str(tmp_path / 'same')})
    steps = run_scaling(config, tmp_path / 'run', progress=False)
    assert steps and all(s.bad and math.isnan(s.ntk) for s in steps)

    def strict(path):
        return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f'{path} holds {name}'))

    saved = strict(tmp_path / 'run' / TRAJECTORY_FILE)
    assert all(s['ntk'] is None and s['bad'] and all(c['ntk'] is None for c in s['candidates'])
               for s in saved['steps'])
    write_variant_cards(tmp_path / 'reg', ['asvit_nantest'], config, steps, 'asvit scale ...')
    assert strict(tmp_path / 'reg' / 'asvit_nantest' / 'config.json')['provenance']['ntk'] is None
    resumed = run_scaling(config, tmp_path / 'run', resume=True, progress=False)
    assert [(s.depths, s.width, s.bad) for s in resumed] == [(s.depths, s.width, s.bad) for s in steps]
    assert all(math.isnan(s.ntk) and all(math.isnan(c.ntk) for c in s.candidates) for s in resumed)
