"""The benchmark scripts stay runnable: each parses its options, and the GPU script's search slice runs on CPU.

The benchmarks themselves are measured by hand (their docstrings say how), never timed here."""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

import pytest

from conftest import REPO_ROOT

SCRIPTS = sorted((REPO_ROOT / 'benchmarks').glob('bench_*.py'))


def load_script(path: Path) -> ModuleType:
    """A benchmark script as a module (its ``main`` not run)."""
    spec = importlib.util.spec_from_file_location(f'benchmarks_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_is_found():
    assert [p.stem for p in SCRIPTS] == ['bench_detection', 'bench_gpu', 'bench_measures', 'bench_model',
                                         'bench_retokenization']


@pytest.mark.parametrize('path', SCRIPTS, ids=lambda p: p.stem)
def test_every_benchmark_option_has_a_help_text(path: Path, monkeypatch: pytest.MonkeyPatch):
    parsers = []

    def stop(parser: argparse.ArgumentParser, args: Optional[Sequence[str]] = None) -> None:
        parsers.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', stop)
    with pytest.raises(SystemExit):
        load_script(path).main([])
    (parser,) = parsers
    options = [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]
    assert options and [a.dest for a in options if not a.help] == []


def test_gpu_benchmark_refuses_a_single_search_step(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        load_script(REPO_ROOT / 'benchmarks' / 'bench_gpu.py').main(['--device', 'cpu', '--search-steps', '1'])
    assert exit_info.value.code == 2
    assert '--search-steps must be at least 2' in capsys.readouterr().err


def test_gpu_benchmark_search_slice_runs_on_cpu(tmp_path: Path):
    script = load_script(REPO_ROOT / 'benchmarks' / 'bench_gpu.py')
    assert script.main(['--device', 'cpu', '--output', str(tmp_path), '--parts', 'search', '--search-steps', '2',
                        '--search-size', '32', '--repeat', '1', '--ntk-batch', '2']) == 0
    search = json.loads((tmp_path / 'results.json').read_text())['search']
    assert search['steps'] == 2 and search['config']['image_size'] == 32
    assert search['median_step_s'] > 0 and set(search['median_measure_s']) == {'ntk', 'exp'}
