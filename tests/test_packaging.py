"""A regular (non-editable) install of the wheel is a working zoo, away from the source tree.

The wheel is built from the repository as it is, installed with ``pip install --target`` into a
temporary folder, and used from subprocesses whose only route to ``asvit_zoo`` is that folder
(``PYTHONPATH``, working directory outside the repository). Every ``asvit_zoo`` module they import
must come from the install: an editable install in the same environment cannot stand in for a file
the wheel lacks.
"""
from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / 'registry'
VARIANTS = sorted(config.parent.name for config in REGISTRY.glob('*/config.json'))

# Run by the installed package: imports, registers, builds a variant and runs it at 64x64.
CHECK_INSTALLED = '''
import json, sys
import torch, timm
import asvit_zoo
import asvit_zoo.cli  # the console script's module and its subcommands
from asvit_zoo.registry import registry_root
model = timm.create_model('asvit_seed').eval()
with torch.inference_mode():
    logits = model(torch.randn(2, 3, 64, 64))
json.dump({
    'registry_root': str(registry_root()),
    'modules': {name: getattr(module, '__file__', None) for name, module in sys.modules.items()
                if name.split('.')[0] == 'asvit_zoo'},
    'models': timm.list_models('asvit*'),
    'logits_shape': list(logits.shape),
    'logits_finite': bool(torch.isfinite(logits).all()),
}, sys.stdout)
'''


def run(args: List[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``args``; on failure, fail the test with the command's output."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(f'{" ".join(args)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}')
    return result


@pytest.fixture(scope='module')
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('wheel')
    run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w', str(out), str(REPO)])
    wheels = sorted(out.glob('asvit_zoo-*.whl'))
    assert len(wheels) == 1, f'expected one asvit_zoo wheel in {out}, got {wheels}'
    return wheels[0]


@pytest.fixture(scope='module')
def site(wheel: Path) -> Path:
    target = wheel.parent.parent / 'site'
    run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '--target', str(target), str(wheel)])
    return target


def run_installed(site: Path, args: List[str]) -> subprocess.CompletedProcess[str]:
    """Run ``args`` with the install as the only source of asvit_zoo, outside the repository."""
    return run(args, cwd=site.parent, env={**os.environ, 'PYTHONPATH': str(site)})


def test_wheel_ships_modules_registry_and_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [entry_points] = [n for n in names if n.endswith('.dist-info/entry_points.txt')]
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode())

    modules = {path.relative_to(REPO).as_posix() for path in (REPO / 'asvit_zoo').rglob('*.py')}
    assert modules - names == set(), 'source modules missing from the wheel'
    assert VARIANTS, f'no variant folders with config.json in {REGISTRY}'
    cards = {f'asvit_zoo/_registry/{name}/{file}' for name in VARIANTS for file in ('config.json', 'README.md')}
    weights = {f'asvit_zoo/_registry/{path.parent.name}/{path.name}' for path in REGISTRY.glob('*/*.safetensors')}
    assert weights, f'no weights in {REGISTRY}'
    assert (cards | weights) - names == set(), 'registry files missing from the wheel'
    presets = {f'asvit_zoo/presets/{path.name}' for path in (REPO / 'asvit_zoo' / 'presets').glob('*.json')}
    assert presets and presets - names == set(), 'build presets missing from the wheel'
    assert scripts.get('console_scripts', 'asvit', fallback=None) == 'asvit_zoo.cli:main'


def test_installed_zoo_registers_and_runs_every_variant(site: Path) -> None:
    info: Dict[str, Any] = json.loads(run_installed(site, [sys.executable, '-c', CHECK_INSTALLED]).stdout)

    outside = {name: file for name, file in info['modules'].items()
               if file is None or not Path(file).resolve().is_relative_to(site.resolve())}
    assert outside == {}, f'asvit_zoo modules imported from outside the install {site}'
    assert 'asvit_zoo' in info['modules']
    assert Path(info['registry_root']).resolve() == (site / 'asvit_zoo' / '_registry').resolve()
    assert {name.split('.')[0] for name in VARIANTS} <= set(info['models'])
    assert info['logits_shape'] == [2, 1000] and info['logits_finite']


def test_installed_console_script_runs(site: Path) -> None:
    script = site / 'bin' / 'asvit'
    assert script.is_file(), f'pip did not install the asvit console script into {script.parent}'
    result = run_installed(site, [sys.executable, str(script), '--help'])
    assert 'usage: asvit' in result.stdout


def test_installed_weights_reproduce_their_cards_offline(site: Path, tmp_path: Path) -> None:
    """The shipped weights load offline from the install (no Hub, an empty HF cache) and `asvit eval` gives the
    accuracy their cards record."""
    script = site / 'bin' / 'asvit'
    env = {**os.environ, 'PYTHONPATH': str(site), 'HF_HUB_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf'),
           'HF_HUB_CACHE': str(tmp_path / 'hf' / 'hub')}
    shipped = sorted(path.parent for path in REGISTRY.glob('*/model.safetensors'))
    assert shipped
    for folder in shipped:
        card = json.loads((folder / 'config.json').read_text())
        result = run([sys.executable, str(script), 'eval', folder.name, '--json'], cwd=site.parent, env=env)
        scored = json.loads(result.stdout)
        assert scored['images'] == 10000
        assert abs(scored['top1'] - card['provenance']['eval_top1']) <= 0.2, (folder.name, scored)
        assert abs(scored['top5'] - card['provenance']['eval_top5']) <= 0.2, (folder.name, scored)
