"""REINFORCE seed search: run folder, reward rule, bad networks, exact resume after a kill, CLI errors.

Runs are tiny (32x32 images, one copy, 4 images, a few steps) but use the real measures."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch

from asvit_zoo import cli
from asvit_zoo.commands.options import parse_count, parse_positive
from asvit_zoo.datasets import DEFAULT_ROOT
from asvit_zoo.asvit import AsViT
from asvit_zoo.cost import count_macs, param_count
from asvit_zoo.genotype import SEARCH_SPACE, Genotype
from asvit_zoo.measures import Measures, measure_genotype
from asvit_zoo.devices import resolve_device
from asvit_zoo.search import (Baseline, MeasureHistory, SearchConfig, budget_penalty, search,
                              search_cost_range)
from conftest import one_thread, torchrun

REPO_ROOT = Path(__file__).resolve().parents[1]
# real images when Debian's dataset-fashion-mnist is installed, Gaussian noise otherwise
DATA = 'fashion-mnist' if (DEFAULT_ROOT / 'train-images-idx3-ubyte.gz').is_file() else 'noise'
TINY = dict(repeat=1, batch_size=4, image_size=32, data=DATA, seed=0)
TINY_ARGS = ['--repeat', '1', '--batch-size', '4', '--image-size', '32', '--data', DATA, '--seed', '0']
STEPS = 4
RECORD_KEYS = {'step', 'genotype', 'derived', 'measures', 'values', 'changes', 'penalty', 'reward', 'baseline',
               'entropy', 'params', 'gmacs', 'measure_seconds', 'seconds'}
TIMES = ('measure_seconds', 'seconds')  # wall times: the only fields two equal runs may differ in


def read_records(run: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in (run / 'steps.jsonl').read_text().splitlines()]


def without_seconds(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMES} for r in records]


def expected_change(values: List[float], i: int) -> float:
    if i == 0:
        return 0.0
    recent = values[max(0, i - 19):i + 1]
    return (values[i] - values[i - 1]) / (max(recent) - min(recent) + 1e-6)


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of STEPS steps, the baseline of the resume tests."""
    run = tmp_path_factory.mktemp('search') / 'reference'
    search(SearchConfig(steps=STEPS, **TINY), run, progress=False)
    return run


# --------------------------------------------------------------------------- the algorithm's pieces
def test_measure_history_change_and_window() -> None:
    h = MeasureHistory(higher_is_better=True)
    values = [float(v) for v in (3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3)]
    for i, v in enumerate(values):
        assert h.push(v) == pytest.approx(expected_change(values, i), abs=0, rel=1e-12)


def test_measure_history_bad_values_take_the_worst() -> None:
    ntk = MeasureHistory(higher_is_better=False)
    assert ntk.push(math.nan, bad=True) == 0.0  # nothing known yet
    assert ntk.push(10.0) == 0.0 and ntk.values == [10.0, 10.0]  # the first value fills the bad entry
    ntk.push(4.0)
    ntk.push(7.0, bad=True)  # a bad network: worst so far, whatever it measured
    assert ntk.values[-1] == 10.0
    ntk.push(math.inf)  # an infinite condition number is bad too
    assert ntk.values[-1] == 10.0 and ntk.bad == [True, False, False, True, True]
    ntk.push(20.0)  # a new worst: every bad entry follows it
    assert ntk.values == [20.0, 10.0, 4.0, 20.0, 20.0, 20.0]
    exp = MeasureHistory(higher_is_better=True)
    exp.push(2.0), exp.push(1.0)
    assert exp.push(math.nan) == pytest.approx(0.0) and exp.values[-1] == 1.0


def test_baseline_is_a_bias_corrected_ema() -> None:
    b = Baseline()
    assert b.update(2.0) == pytest.approx(2.0)
    assert b.update(1.0) == pytest.approx((0.9 * 0.1 * 2 + 0.1 * 1) / (0.9 * 0.1 + 0.1))


def test_budget_penalty_formula() -> None:
    config = SearchConfig(steps=1, max_params=2_000_000, max_gmacs=0.005, **TINY)
    assert budget_penalty(config, 1_000_000, 0.0025) == 0.0
    assert budget_penalty(config, 3_000_000, 0.0075) == pytest.approx(0.5 + 0.5)
    assert budget_penalty(SearchConfig(steps=1, **TINY), 10 ** 9, 100.0) == 0.0


def test_search_cost_range_spans_the_search_space(capsys: pytest.CaptureFixture) -> None:
    """The range's ends are the costs of the network with the largest kernels and expansions and the smallest
    splits, and of the reverse; changing any one decision of either to the next choice stays within the range."""
    ranges = search_cost_range(64)

    def cost(decisions: List[int]) -> Tuple[int, float]:
        model = AsViT(Genotype.from_decisions(decisions).scaled((1, 1, 1, 1), 32))
        return param_count(model), count_macs(model, (3, 64, 64)) / 1e9

    for end, largest in ((0, False), (1, True)):
        extreme = [choices.index((max if largest != name.startswith('split') else min)(choices))
                   for name, choices in SEARCH_SPACE.items()]
        assert cost(extreme) == (ranges['params'][end], ranges['gmacs'][end])
        for i, choices in enumerate(SEARCH_SPACE.values()):
            index = 1 if extreme[i] == 0 else extreme[i] - 1  # the next choice inwards
            params, gmacs = cost(extreme[:i] + [index] + extreme[i + 1:])
            assert ranges['params'][0] <= params <= ranges['params'][1]
            assert ranges['gmacs'][0] <= gmacs <= ranges['gmacs'][1]
    assert ranges['gmacs'][1] < search_cost_range(128)['gmacs'][1]
    with pytest.raises(SystemExit):
        cli.main(['search', '--help'])
    help_text = ' '.join(capsys.readouterr().out.split())
    (params_low, params_high), (gmacs_low, gmacs_high) = search_cost_range(224).values()
    assert f'{params_low / 1e6:.1f}M to {params_high / 1e6:.1f}M parameters' in help_text
    assert f'about {gmacs_low:.2f} to {gmacs_high:.2f} at 224' in help_text


# --------------------------------------------------------------------------- real runs
def test_run_folder_and_reward_rule(reference_run: Path) -> None:
    records = read_records(reference_run)
    assert [r['step'] for r in records] == list(range(STEPS))
    assert all(set(r) == RECORD_KEYS for r in records)
    ntk = [r['values']['ntk'] for r in records]
    exp = [r['values']['exp'] for r in records]
    baseline = Baseline()
    for i, r in enumerate(records):
        Genotype.parse(r['genotype'])
        assert r['measures']['ntk'] > 0 and r['measures']['exp'] > 0 and r['params'] > 0 and r['gmacs'] > 0
        assert set(r['measure_seconds']) == {'ntk', 'exp'}
        assert 0 < sum(r['measure_seconds'].values()) <= r['seconds']
        assert r['reward'] == pytest.approx(-expected_change(ntk, i) + expected_change(exp, i), abs=1e-12)
        assert r['baseline'] == pytest.approx(baseline.update(r['reward']), abs=1e-12)
    assert records[0]['reward'] == 0.0
    assert records[-1]['entropy'] < records[0]['entropy'] <= sum(math.log(n) for n in (5, 3, 3, 3, 3, 3, 2, 5, 5,
                                                                                         5, 5, 3))
    summary = json.loads((reference_run / 'summary.json').read_text())
    assert summary['genotype'] == records[-1]['derived'] and summary['steps'] == STEPS
    assert summary['measures']['ntk'] > 0 and summary['wall_seconds'] > 0
    assert (reference_run / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    state = torch.load(reference_run / 'state.pt', weights_only=True)
    assert state['step'] == STEPS and state['log_bytes'] == (reference_run / 'steps.jsonl').stat().st_size


def test_a_step_moves_the_policy_with_the_sign_of_reward_minus_baseline(tmp_path: Path) -> None:
    """REINFORCE: the step raises the logit of each sampled choice when its reward beats the baseline (and lowers
    it otherwise), the other choices moving the other way; the derived genotype is the argmax of the logits."""
    run = tmp_path / 'run'
    search(SearchConfig(steps=1, **TINY), run, progress=False)
    before = torch.load(run / 'state.pt', weights_only=True)['policy']
    search(SearchConfig(steps=2, **TINY), run, resume=True, progress=False)
    after = torch.load(run / 'state.pt', weights_only=True)['policy']
    record = read_records(run)[1]
    advantage = record['reward'] - record['baseline']
    assert advantage != 0
    sampled = Genotype.parse(record['genotype']).decisions()
    for i, choice in enumerate(sampled):
        moved = after[f'logits.{i}'] - before[f'logits.{i}']
        others = [c for c in range(len(moved)) if c != choice]
        assert math.copysign(1, advantage) * moved[choice] > 0, (i, moved)
        assert all(math.copysign(1, advantage) * moved[c] < 0 for c in others), (i, moved)
    derived = Genotype.from_decisions([int(after[f'logits.{i}'].argmax()) for i in range(len(sampled))])
    assert record['derived'] == str(derived)


def test_resume_after_sigkill_matches_uninterrupted(reference_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / 'killed'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'asvit_zoo.cli', 'search', '--out', str(run), '--steps', str(STEPS), *TINY_ARGS,
         '--no-progress'], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    steps_file = run / 'steps.jsonl'
    deadline = time.monotonic() + 60
    while not (steps_file.exists() and steps_file.read_text().count('\n') >= 2):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, 'the search made no progress'
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / 'summary.json').exists()
    # what a kill during a write can leave besides: half a record and a half-written checkpoint
    with open(steps_file, 'a') as f:
        f.write('{"step": 9, "genotype": "4,2')
    (run / '.state.pt.x1y2z3.tmp').write_bytes(b'\x80\x02garbage')
    assert cli.main(['search', '--out', str(run), '--steps', str(STEPS), *TINY_ARGS, '--no-progress',
                     '--resume']) == 0
    assert without_seconds(read_records(run)) == without_seconds(read_records(reference_run))
    summary, reference = (json.loads((r / 'summary.json').read_text()) for r in (run, reference_run))
    assert summary['genotype'] == reference['genotype'] and summary['genotype'] in capsys.readouterr().out
    assert summary['measures'] == reference['measures']


def test_bad_networks_do_not_break_the_search(tmp_path: Path) -> None:
    calls: List[Genotype] = []

    def flaky(genotype: Genotype, **kwargs: Any) -> Measures:
        """Real measures, except: calls 1 and 4 a NaN NTK condition (bad network), call 3 an infinite exp."""
        calls.append(genotype)
        m = measure_genotype(genotype, **kwargs)
        if len(calls) in (1, 4):
            return dataclasses.replace(m, ntk=math.nan, bad=True)
        if len(calls) == 3:
            return dataclasses.replace(m, exp=math.inf)
        return m

    search(SearchConfig(steps=4, **TINY), tmp_path, scorer=flaky, progress=False)
    records = read_records(tmp_path)
    assert [r['measures']['bad'] for r in records] == [True, False, False, True]
    assert records[0]['measures']['ntk'] is None and records[2]['measures']['exp'] is None
    ntk = [r['measures']['ntk'] for r in records]
    # nothing known at a bad first step; the first finite value fills it, so its change is 0
    assert records[0]['values']['ntk'] is None and records[1]['changes']['ntk'] == 0.0
    assert records[3]['values']['ntk'] == max(ntk[1], ntk[2])  # worst seen so far
    assert records[2]['values']['exp'] == min(r['measures']['exp'] for r in records[:2])
    assert all(math.isfinite(r['reward']) for r in records)


EXP_BUDGET = dict(measures=('exp',), max_params=1_000_000, **TINY)


@pytest.fixture(scope='module')
def exp_budget_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 steps rewarded by length distortion only, with a parameter budget every network exceeds."""
    run = tmp_path_factory.mktemp('search') / 'exp-budget'
    search(SearchConfig(steps=4, **EXP_BUDGET), run, progress=False)
    return run


def test_exp_only_with_a_params_budget(exp_budget_run: Path) -> None:
    records = read_records(exp_budget_run)
    exp = [r['values']['exp'] for r in records]
    for i, r in enumerate(records):
        assert set(r['measures']) == {'exp', 'bad'} and set(r['changes']) == {'exp'}
        assert r['penalty'] == pytest.approx(r['params'] / 1e6 - 1) and r['penalty'] > 0
        assert r['reward'] == pytest.approx(expected_change(exp, i) - r['penalty'], abs=1e-12)


def test_resume_extends_a_finished_run(exp_budget_run: Path, tmp_path: Path) -> None:
    search(SearchConfig(steps=2, **EXP_BUDGET), tmp_path, resume=True, progress=False)  # nothing to resume: starts
    result = search(SearchConfig(steps=4, **EXP_BUDGET), tmp_path, resume=True, progress=False)
    assert without_seconds(read_records(tmp_path)) == without_seconds(read_records(exp_budget_run))
    assert str(result.genotype) == json.loads((exp_budget_run / 'summary.json').read_text())['genotype']


# --------------------------------------------------------------------------- torchrun
def test_torchrun_resumes_a_run_and_matches_one_process(tmp_path: Path) -> None:
    """Two CPU processes (gloo) continue a one-process run to the records and result of an uninterrupted one;
    process 0 alone writes the folder and prints the result."""
    args = ['--steps', '4', '--repeat', '3', *TINY_ARGS[2:], '--no-progress']
    for out, steps in (('one', '4'), ('resumed', '2')):
        proc = one_thread(['-m', 'asvit_zoo.cli', 'search', '--out', str(tmp_path / out), *args, '--steps', steps])
        assert proc.returncode == 0, proc.stderr
    two = torchrun(['-m', 'asvit_zoo.cli', 'search', '--out', str(tmp_path / 'resumed'), *args, '--resume'])
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    expected = without_seconds(read_records(tmp_path / 'one'))
    assert len(expected) == 4 and without_seconds(read_records(tmp_path / 'resumed')) == expected
    summary, other = (json.loads((tmp_path / name / 'summary.json').read_text()) for name in ('one', 'resumed'))
    assert (other['genotype'], other['measures']) == (summary['genotype'], summary['measures'])
    assert two.stdout.count(summary['genotype']) == 1  # one result line, from process 0
    assert sorted(p.name for p in (tmp_path / 'resumed').iterdir()) == sorted(
        p.name for p in (tmp_path / 'one').iterdir())


# --------------------------------------------------------------------------- CLI
def test_cli_lists_search() -> None:
    assert 'search' in cli.build_parser().format_help()


def test_budget_parsing() -> None:
    assert [parse_count(t, '--max-params') for t in ('30M', '1.5g', '250k', '30000000')] == [
        30_000_000, 1_500_000_000, 250_000, 30_000_000]
    assert parse_positive('5', '--max-gmacs') == 5.0
    assert parse_count('1.005M', '--max-params') == 1_005_000  # rounded, not truncated (1004999.99...)
    for text in ('0.4', '0'):  # below one: refused by the option itself, naming it
        with pytest.raises(ValueError, match=f"--max-params must be a positive count .*got '{text}'"):
            parse_count(text, '--max-params')
    with pytest.raises(ValueError, match="--max-gmacs must be a positive number, got '0'"):
        parse_positive('0', '--max-gmacs')


@pytest.mark.parametrize('values, message', [
    (dict(measures='ntk'), "measures must be a non-empty list of strings, got 'ntk'"),
    (dict(measures=()), r'measures must be a non-empty list of strings, got \(\)'),
    (dict(max_params=-2e6), 'max_params must be a finite number > 0 or unset, got -2000000.0'),
    (dict(max_gmacs=float('inf')), 'max_gmacs must be a finite number > 0 or unset, got inf'),
    (dict(max_params=30e6), r'max_params must be below 2,424,680, the params of the largest network the search '
                            r'measures \(width 32, depths \[1, 1, 1, 1\]: 1,200,360 to 2,424,680\), or unset; got '
                            r'30,000,000, which no network reaches'),
    (dict(max_gmacs=5, image_size=64), r'max_gmacs must be below 0.02661, the gmacs of the largest network the '
                                       r'search measures \(width 32, depths \[1, 1, 1, 1\]: 0.0108 to 0.02661 at '
                                       r'image_size 64\), or unset; got 5, which no network reaches'),
    (dict(steps='10'), "steps must be an integer >= 1, got '10'"),
])
def test_settings_are_checked(values: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f'^{message}$'):
        SearchConfig(**values)


@pytest.mark.parametrize('args, message', [
    (['--data', '/no/such/folder'], """data source '/no/such/folder' is neither "fashion-mnist", "noise" nor an """
                                    'existing ImageFolder directory'),
    (['--device', 'tpu'], "device 'tpu' is not a torch device; use cpu, cuda or cuda:N"),
    (['--device', 'mps'], "device 'mps': asvit-zoo runs on cpu or cuda, not mps"),
    (['--max-params=-3M'], "--max-params must be a positive count such as 30M, 1.5G or 250000, got '-3M'"),
    (['--max-params', 'abc'], "--max-params must be a positive count such as 30M, 1.5G or 250000, got 'abc'"),
    (['--max-gmacs', '-1'], "--max-gmacs must be a positive number, got '-1'"),
    (['--max-params', '30M'], 'max_params must be below 2,424,680, the params of the largest network the search '
                              'measures (width 32, depths [1, 1, 1, 1]: 1,200,360 to 2,424,680), or unset; got '
                              '30,000,000, which no network reaches'),
    (['--max-gmacs', 'abc'], "--max-gmacs must be a positive number, got 'abc'"),
    (['--measures', 'ntk,flops'], "measures must be a non-empty list of distinct names from ['exp', 'ntk'], got "
                                  "['ntk', 'flops']"),
    (['--steps', '0'], 'steps must be an integer >= 1, got 0'),
    (['--seed', '-1'], 'seed must be an integer in [0, 4294967295], got -1'),
])
def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture, args: List[str], message: str) -> None:
    out = tmp_path / 'run'
    assert cli.main(['search', '--out', str(out), *TINY_ARGS, *args]) == 2
    assert capsys.readouterr().err.strip() == f'asvit search: error: {message}'
    assert not out.exists()


def test_cli_cuda_without_gpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip('a CUDA GPU is available here')
    assert cli.main(['search', '--out', str(tmp_path / 'run'), '--device', 'cuda']) == 2
    assert 'no CUDA GPU is available here' in capsys.readouterr().err
    with pytest.raises(ValueError, match='no CUDA GPU'):
        resolve_device('cuda:0')


def test_cli_refuses_to_overwrite_or_resume_with_other_settings(reference_run: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    assert cli.main(['search', '--out', str(reference_run), '--steps', str(STEPS), *TINY_ARGS]) == 2
    assert 'already holds a search run; pass --resume' in capsys.readouterr().err
    assert cli.main(['search', '--out', str(reference_run), '--steps', str(STEPS), *TINY_ARGS, '--seed', '1',
                     '--resume']) == 2
    assert 'cannot resume with different settings (seed: saved 0, given 1)' in capsys.readouterr().err
    assert cli.main(['search', '--out', str(reference_run), '--steps', '2', *TINY_ARGS, '--resume']) == 2
    assert f'already done {STEPS} steps, more than steps=2' in capsys.readouterr().err


def test_cli_names_a_missing_step_log(reference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = Path(shutil.copytree(reference_run, tmp_path / 'run'))
    (run / 'steps.jsonl').unlink()
    assert cli.main(['search', '--out', str(run), '--steps', str(STEPS), *TINY_ARGS, '--resume']) == 2
    assert f'{run / "steps.jsonl"} is missing or shorter than the {STEPS} steps' in capsys.readouterr().err


@pytest.mark.parametrize('state_value, message', [
    ([1], 'not a search checkpoint (an object with "version")'),
    ({'version': 1, 'config': {}}, 'not a search checkpoint (an object with "config", "step", '),
])
def test_cli_names_a_state_file_of_the_wrong_shape(reference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   state_value, message) -> None:
    run = Path(shutil.copytree(reference_run, tmp_path / 'run'))
    torch.save(state_value, run / 'state.pt')
    assert cli.main(['search', '--out', str(run), '--steps', str(STEPS), *TINY_ARGS, '--resume']) == 2
    err = capsys.readouterr().err
    assert f'asvit search: error: {run / "state.pt"}: {message}' in err and 'Traceback' not in err


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_cli_names_a_damaged_state_file(reference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        damage: str) -> None:
    run = Path(shutil.copytree(reference_run, tmp_path / 'run'))
    state = run / 'state.pt'
    state.write_bytes(b'garbage\n' if damage == 'garbage' else state.read_bytes()[:500])
    assert cli.main(['search', '--out', str(run), '--steps', str(STEPS), *TINY_ARGS, '--resume']) == 2
    err = capsys.readouterr().err
    assert f'asvit search: error: {state}: not a readable torch checkpoint' in err and 'Traceback' not in err
