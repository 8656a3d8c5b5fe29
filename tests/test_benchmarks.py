"""The benchmark scripts stay runnable: each builds its options, and the GPU script's search slice runs on CPU.

The benchmarks themselves are measured by hand (their docstrings say how), never timed here."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from conftest import REPO_ROOT, options_without_help, parser_of

SCRIPTS = sorted((REPO_ROOT / 'benchmarks').glob('bench_*.py'))
BENCH_GPU = REPO_ROOT / 'benchmarks' / 'bench_gpu.py'


def test_every_benchmark_is_found():
    assert [p.stem for p in SCRIPTS] == ['bench_detection', 'bench_gpu', 'bench_measures', 'bench_model',
                                         'bench_retokenization']


@pytest.mark.parametrize('path', SCRIPTS, ids=lambda p: p.stem)
def test_every_benchmark_option_has_a_help_text(path: Path, monkeypatch: pytest.MonkeyPatch):
    parser = parser_of(runpy.run_path(str(path))['main'], monkeypatch)
    assert parser._actions[1:] and options_without_help(parser) == []


def test_gpu_benchmark_refuses_a_single_search_step(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCH_GPU))['main'](['--device', 'cpu', '--search-steps', '1'])
    assert exit_info.value.code == 2
    assert '--search-steps must be at least 2' in capsys.readouterr().err


def test_gpu_benchmark_search_slice_runs_on_cpu(tmp_path: Path):
    assert runpy.run_path(str(BENCH_GPU))['main'](['--device', 'cpu', '--output', str(tmp_path), '--parts', 'search',
                                                  '--search-steps', '2', '--search-size', '32', '--repeat', '1',
                                                  '--ntk-batch', '2']) == 0
    search = json.loads((tmp_path / 'results.json').read_text())['search']
    assert search['steps'] == 2 and search['config']['image_size'] == 32
    assert search['median_step_s'] > 0 and set(search['median_measure_s']) == {'ntk', 'exp'}
