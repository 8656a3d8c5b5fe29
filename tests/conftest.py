"""Shared test fixtures. The golden files live in ../shared beside the clone (as in CI); tests that
need them skip with a clear reason where they are absent, as in a user's clone."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared'
REFERENCE_FIXTURES = SHARED / 'fixtures' / 'asvit_reference'
GOLDEN_NETWORKS = ('search_seed_c32', 'scaled_small64')


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
