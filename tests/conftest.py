"""Shared test fixtures. The golden files live in ../shared beside the clone (as in CI); tests that
need them skip with a clear reason where they are absent, as in a user's clone."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared'
REFERENCE_FIXTURES = SHARED / 'fixtures' / 'asvit_reference'
GOLDEN_NETWORKS = ('search_seed_c32', 'scaled_small64')


def one_thread(args: List[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root with one thread, the rounding of each process of :func:`torchrun`."""
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'},
                          capture_output=True, text=True, timeout=timeout)


def torchrun(args: List[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` (a script or ``-m module`` and its arguments) from the
    repository root, one thread per process."""
    return one_thread(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', *args], timeout)


def parser_of(main: Callable[[List[str]], Any], monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The argument parser that a command-line ``main(argv)`` builds, caught where it parses (``main`` stops
    there)."""
    caught: List[argparse.ArgumentParser] = []

    def stop(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        caught.append(parser)
        raise SystemExit(0)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, 'parse_args', stop)
        with pytest.raises(SystemExit):
            main([])
    (parser,) = caught
    return parser


def options_without_help(parser: argparse.ArgumentParser) -> List[str]:
    """The options and arguments of ``parser`` that have no help text."""
    return [a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction) and not a.help]


@pytest.fixture(scope='session')
def reference_dir() -> Path:
    """Folder of the golden files made with the authors' code."""
    if not (REFERENCE_FIXTURES / 'expected.json').is_file():
        pytest.skip(f'golden fixtures not found at {REFERENCE_FIXTURES} (../shared beside the clone)')
    return REFERENCE_FIXTURES


@pytest.fixture(scope='session')
def reference_expected(reference_dir: Path) -> Dict[str, Dict[str, Any]]:
    """expected.json of the golden fixtures, per network name."""
    return json.loads((reference_dir / 'expected.json').read_text())


def _hf_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """The Hugging Face cache layout of a repo holding ``folder``'s files: blobs, snapshots (links), refs/main."""
    from asvit_zoo.hub import sha256_file

    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = 'a' * 40
    for file in folder.iterdir():
        blob = repo / 'blobs' / sha256_file(file)
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = repo / 'snapshots' / commit / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    return root


@pytest.fixture(scope='session')
def hf_cache() -> Callable[[Path, str, Path], Path]:
    """``hf_cache(root, repo_id, folder)``: a Hugging Face cache under ``root`` holding ``folder`` as ``repo_id``
    (what ``hf download`` leaves), for offline tests with ``HF_HUB_CACHE=root`` and ``HF_HUB_OFFLINE=1``."""
    return _hf_cache
