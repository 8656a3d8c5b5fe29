"""``asvit correlate``: topology sampling, Kendall tau, and a small real study that resumes exactly."""
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest

from asvit_zoo.cli import main as cli_main
from asvit_zoo.correlation import (RECORDS_FILE, CorrelationConfig, _markdown, correlate, kendall_table,
                                  sample_topologies)
from asvit_zoo.genotype import Genotype

TINY = CorrelationConfig(n=3, measure_image_size=32, ntk_batch=4, train_subset=256, eval_subset=100, batch_size=64)
TIMED = ('measure_seconds', 'train_seconds')


def test_samples_are_distinct_valid_and_reproducible():
    first = sample_topologies(30, seed=1)
    assert len({str(g) for g in first}) == 30
    assert all(Genotype.parse(str(g)).is_seed for g in first)
    assert [str(g) for g in sample_topologies(30, seed=1)] == [str(g) for g in first]
    assert [str(g) for g in sample_topologies(30, seed=2)] != [str(g) for g in first]


def test_kendall_signs():
    records = [dict(top1=a, exp=a / 10, curvature=-a, combined=None, ntk=100 - a, params=5, gmacs=a % 3)
               for a in (10., 20., 30., 40.)]
    rows = {r['score']: r for r in kendall_table(records)}
    assert rows['exp']['tau'] == pytest.approx(1.0) and rows['exp']['agrees']
    assert rows['ntk']['tau'] == pytest.approx(-1.0) and rows['ntk']['agrees']  # smaller condition is better
    assert rows['curvature']['tau'] == pytest.approx(-1.0) and not rows['curvature']['agrees']
    assert rows['combined']['tau'] is None and rows['combined']['n'] == 0
    assert rows['params']['tau'] is None and rows['params']['n'] == 4  # a constant score does not rank
    unmeasured = kendall_table([dict(r, exp=math.nan if r['top1'] == 10. else r['exp']) for r in records])
    assert unmeasured[0]['score'] == 'exp' and unmeasured[0]['n'] == 3 and unmeasured[0]['tau'] == pytest.approx(1.0)
    flat = kendall_table([dict(r, top1=0.) for r in records])  # every network at chance: no ranking either
    assert all(r['tau'] is None and r['p_value'] is None for r in flat)
    assert [r['expected_sign'] for r in flat] == [1, 1, 1, -1, 1, 1]  # the paper's sign, known without a tau
    json.dumps(flat, allow_nan=False)  # what correlation.json holds is valid JSON
    table = _markdown(flat, TINY, 60.)
    assert '| length distortion | 4 | n/a | n/a | + | n/a |' in table
    assert '| NTK condition number | 4 | n/a | n/a | - | n/a |' in table
    ranked = _markdown(list(rows.values()), TINY, 60.)  # a negative tau agrees where the expected sign is '-'
    p_ntk, p_curvature = (f"{rows[key]['p_value']:.3g}" for key in ('ntk', 'curvature'))
    assert f'| NTK condition number | 4 | -1.000 | {p_ntk} | - | yes |' in ranked
    assert f'| {rows["curvature"]["label"]} | 4 | -1.000 | {p_curvature} | + | no |' in ranked


def _untimed(record):
    return {k: v for k, v in record.items() if k not in TIMED}


def test_a_small_study_runs_and_resumes_exactly(tmp_path: Path):
    summary = correlate(TINY, tmp_path, progress=False)
    saved = json.loads((tmp_path / RECORDS_FILE).read_text())
    records = saved['records']
    assert [r['index'] for r in records] == [0, 1, 2]
    assert all(0 <= r['top1'] <= 100 and r['params'] > 0 for r in records)
    assert {r['score'] for r in summary['kendall']} == {'exp', 'curvature', 'combined', 'ntk', 'params', 'gmacs'}
    for score in ('exp', 'ntk', 'params'):
        assert (tmp_path / f'scatter_{score}.png').read_bytes()[:4] == b'\x89PNG'
    assert '| length distortion |' in (tmp_path / 'correlation.md').read_text()

    # Interrupted after two topologies: the third is measured and trained again, to the same record.
    (tmp_path / RECORDS_FILE).write_text(json.dumps(dict(saved, records=records[:2])))
    for run in (tmp_path / 'runs').iterdir():
        if run.name == '002':
            for f in run.iterdir():
                f.unlink()
    correlate(TINY, tmp_path, progress=False)
    again = json.loads((tmp_path / RECORDS_FILE).read_text())['records']
    assert [_untimed(r) for r in again] == [_untimed(r) for r in records]


def test_other_options_do_not_continue_a_study(tmp_path: Path, capsys: pytest.CaptureFixture):
    saved = dataclasses.asdict(CorrelationConfig(n=4, batch_size=64))
    (tmp_path / RECORDS_FILE).write_text(json.dumps({'config': saved, 'records': [], 'seconds': 0}))
    assert cli_main(['correlate', '--out', str(tmp_path), '-n', '3', '--batch-size', '64', '--no-progress']) == 2
    assert capsys.readouterr().err == (f'asvit correlate: error: {tmp_path / RECORDS_FILE} was written with other '
                                       f'settings (n: saved 4, given 3); use the same options to continue it, or '
                                       f'another output folder\n')


@pytest.mark.parametrize('text', ['[]', '{"records": []}', '{"config": "x", "records": []}'])
def test_a_damaged_record_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture, text: str):
    (tmp_path / RECORDS_FILE).write_text(text)
    assert cli_main(['correlate', '--out', str(tmp_path), '-n', '3', '--batch-size', '64', '--no-progress']) == 2
    assert capsys.readouterr().err == (f'asvit correlate: error: {tmp_path / RECORDS_FILE}: not a correlation study '
                                       f'(an object with "config" and "records"); delete it, or start again in a new '
                                       f'folder\n')


@pytest.mark.parametrize('args, message', [
    (['--seed', '-1'], 'seed must be an integer in [0, 4294967295], got -1'),
    (['--device', 'tpu'], "device 'tpu' is not a torch device; use cpu, cuda or cuda:N"),
    (['-n', '5000000'], 'n=5000000 exceeds the 4556250 topologies of the search space'),
    (['--train-subset', '64'], 'train_subset must be at least batch_size (128): a study trains on whole batches, '
                               'got 64'),
    (['--train-subset', '64', '--batch-size', '0'], 'batch_size must be an integer >= 1, got 0'),
    (['--lr', '-1'], 'lr must be a finite number > 0, got -1.0'),
])
def test_bad_options_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture, args, message):
    assert cli_main(['correlate', '--out', str(tmp_path / 'study'), *args, '--no-progress']) == 2
    assert capsys.readouterr().err == f'asvit correlate: error: {message}\n'
    assert not (tmp_path / 'study').exists()


def test_the_batch_size_is_an_option():
    assert CorrelationConfig(train_subset=64, batch_size=32).batch_size == 32


@pytest.mark.parametrize('values, message', [
    (dict(n=2), r'n must be an integer >= 3 \(topologies of a rank correlation\), got 2'),
    (dict(n=3.5), r'n must be an integer >= 3 \(topologies of a rank correlation\), got 3.5'),
    (dict(depths=(1, 0, 1, 1)), r'depths must be a non-empty list of integers >= 1, got \(1, 0, 1, 1\)'),
    (dict(ntk_batch=1), r'ntk_batch must be an integer >= 2 \(a Gram matrix of one image has condition 1\), got 1'),
    (dict(lr=0), 'lr must be a finite number > 0, got 0'),
    (dict(train_subset=0), 'train_subset must be an integer >= 1 or unset, got 0'),
    (dict(device=None), 'device must be a string, got None'),
    (dict(embed_dim=4), r'embed_dim must be an integer >= 8 \(stage 1 of a sampled topology with the most heads '
                        r'needs a channel per head\), got 4'),
    (dict(depths=(1, 1, 1)), r'depths must have 4 values \(one per stage\), got \(1, 1, 1\)'),
])
def test_settings_are_checked(values, message):
    with pytest.raises(ValueError, match=f'^{message}$'):
        CorrelationConfig(**values)


@pytest.mark.parametrize('n, seed, message', [(2.5, 0, 'n must be an integer >= 1, got 2.5'),
                                              (-1, 0, 'n must be an integer >= 1, got -1'),
                                              (3, -1, 'seed must be an integer in')])
def test_sample_topologies_checks_its_arguments(n, seed, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sample_topologies(n, seed)


def test_each_topology_is_measured_with_a_seed_in_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import asvit_zoo.correlation as correlation

    seeds = []

    def stop(*args, seed, **kwargs):  # record the seed, then stop before the training
        seeds.append(seed)
        raise KeyboardInterrupt

    monkeypatch.setattr(correlation, 'measure_genotype', stop)
    config = dataclasses.replace(TINY, seed=2 ** 32 - 1)
    for index in (0, 1):
        with pytest.raises(KeyboardInterrupt):
            correlation._study_one(config, index, sample_topologies(2, config.seed)[index], None, tmp_path)
    assert seeds == [2 ** 32 - 1, 0]
