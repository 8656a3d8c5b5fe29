"""scripts/setup.sh decides what to (re)install: its functions, sourced in bash, with stand-ins for the
interpreter, the mmcv build and apt-get that record what they are asked to do (nothing is installed)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / 'scripts' / 'setup.sh'
FMNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
                't10k-labels-idx1-ubyte')

pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')

# A stand-in interpreter: `-c CHECK` (the mmcv import check) succeeds while the file `ops_load` exists beside
# it; anything else (pip) is recorded.
FAKE_PYTHON = '''#!/usr/bin/env bash
here="$(dirname "$0")"
if [ "$1" = "-c" ]; then [ -f "$here/ops_load" ]; exit $?; fi
echo "python $*" >> "$here/actions"
'''


def run_setup(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Source setup.sh (its functions only), point it at ``tmp_path``, then run ``script``."""
    python = tmp_path / 'python'
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    prelude = f'''
source {SETUP}
PY={python}
MMCV_CACHE={tmp_path}/cache/torch-$TORCH_VERSION
FMNIST_DIR={tmp_path}/fashion-mnist
mkdir -p "$MMCV_CACHE" "$FMNIST_DIR"
build_mmcv_wheel() {{  # a build that works where the file build_fixes exists
  echo build >> {tmp_path}/actions
  touch "$MMCV_CACHE/mmcv-$MMCV_VERSION-cp311-cp311-linux_x86_64.whl"
  if [ -f {tmp_path}/build_fixes ]; then touch {tmp_path}/ops_load; fi
}}
apt-get() {{ echo "apt-get $*" >> {tmp_path}/actions; }}
id() {{ echo 0; }}
'''
    return subprocess.run(['bash', '-c', prelude + script], capture_output=True, text=True, timeout=60)


def actions(tmp_path: Path) -> List[str]:
    log = tmp_path / 'actions'
    return log.read_text().splitlines() if log.exists() else []


def cache_wheel(tmp_path: Path) -> None:
    cache = tmp_path / 'cache' / 'torch-2.14.1'
    cache.mkdir(parents=True)
    (cache / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl').touch()


def test_sourcing_defines_the_steps_and_runs_none(tmp_path: Path) -> None:
    result = run_setup(tmp_path, 'declare -F main install_mmcv check_mmcv install_dataset')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['main', 'install_mmcv', 'check_mmcv', 'install_dataset']
    assert actions(tmp_path) == [] and '[setup]' not in result.stderr


def test_the_mmcv_cache_is_kept_per_torch_version() -> None:
    result = subprocess.run(['bash', '-c', f'source {SETUP}; echo "$MMCV_CACHE"'], capture_output=True,
                            text=True, timeout=60, env={'HOME': '/home/u', 'PATH': '/usr/bin:/bin'})
    assert result.stdout.strip() == '/home/u/.cache/asvit-zoo/wheels/torch-2.14.1'


def test_a_working_mmcv_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / 'ops_load').touch()
    result = run_setup(tmp_path, 'install_mmcv && check_mmcv')
    assert result.returncode == 0, result.stderr
    assert actions(tmp_path) == []


def test_a_cached_wheel_whose_ops_do_not_load_is_built_again_once(tmp_path: Path) -> None:
    cache_wheel(tmp_path)
    (tmp_path / 'build_fixes').touch()
    result = run_setup(tmp_path, 'install_mmcv && check_mmcv')
    assert result.returncode == 0, result.stderr
    steps = [line.split()[0] if 'pip install' not in line else 'install' for line in actions(tmp_path)]
    assert steps == ['install', 'build', 'install']
    assert all('--force-reinstall' in line for line in actions(tmp_path) if 'pip install' in line)
    assert 'does not load its ops' in result.stderr


def test_a_rebuilt_wheel_that_still_fails_stops_setup_with_a_message(tmp_path: Path) -> None:
    cache_wheel(tmp_path)
    result = run_setup(tmp_path, 'install_mmcv && check_mmcv; echo "exit $?"')
    assert result.returncode == 1  # `exit 1` inside check_mmcv: the echo never runs
    assert 'exit' not in result.stdout
    assert [line.split()[0] for line in actions(tmp_path)].count('build') == 1
    assert "built from source does not load its ops with torch 2.14.1" in result.stderr
    assert list((tmp_path / 'cache' / 'torch-2.14.1').iterdir()) == []


def test_a_fresh_build_whose_ops_do_not_load_is_not_built_twice(tmp_path: Path) -> None:
    result = run_setup(tmp_path, 'install_mmcv && check_mmcv')
    assert result.returncode == 1
    assert [line.split()[0] for line in actions(tmp_path)] == ['build', 'python']
    assert "built from source does not load its ops with torch 2.14.1" in result.stderr
    assert 'rebuilding' not in result.stderr
    assert list((tmp_path / 'cache' / 'torch-2.14.1').iterdir()) == []  # the bad wheel is not kept


def test_no_cached_wheel_builds_one(tmp_path: Path) -> None:
    (tmp_path / 'build_fixes').touch()
    result = run_setup(tmp_path, 'install_mmcv && check_mmcv')
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in actions(tmp_path)] == ['build', 'python']


@pytest.mark.parametrize('present', [(), FMNIST_FILES[3:], FMNIST_FILES[:3]])
def test_the_dataset_is_reinstalled_when_any_file_is_missing(tmp_path: Path, present: tuple) -> None:
    (tmp_path / 'fashion-mnist').mkdir()
    for name in present:
        (tmp_path / 'fashion-mnist' / f'{name}.gz').touch()
    result = run_setup(tmp_path, 'install_dataset')
    assert result.returncode == 0, result.stderr
    assert actions(tmp_path)[-1].startswith('apt-get install') and '--reinstall' in actions(tmp_path)[-1]


def test_a_complete_dataset_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / 'fashion-mnist').mkdir()
    for name in FMNIST_FILES:
        (tmp_path / 'fashion-mnist' / f'{name}.gz').touch()
    result = run_setup(tmp_path, 'install_dataset')
    assert result.returncode == 0, result.stderr
    assert actions(tmp_path) == []


def test_a_python_that_cannot_make_the_venv_is_named(tmp_path: Path) -> None:
    bin_dir = tmp_path / 'bin'  # a python3 without venv/ensurepip (Debian without python3-venv) or below 3.10
    bin_dir.mkdir()
    (bin_dir / 'python3').write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.9.2"\nexit 1\n')
    (bin_dir / 'python3').chmod(0o755)
    result = run_setup(tmp_path, f'VENV={tmp_path}/venv; PY=$VENV/bin/python; PATH={bin_dir}:$PATH; make_venv')
    assert result.returncode == 1
    assert ('need python3 >= 3.10 with venv and ensurepip (Debian: apt-get install python3-venv); found: Python '
            '3.9.2') in result.stderr
    assert not (tmp_path / 'venv').exists()
