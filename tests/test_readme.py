"""Every ```python snippet of the README runs as written (from the repository root, in a fresh interpreter), so
the quick start never rots. A snippet that names an ``hf-hub:`` repo runs offline against a Hugging Face cache
holding the shipped registry folder of the same name (what ``asvit push`` uploads)."""
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
FENCE = re.compile(r'^```python\n(.*?)^```', re.DOTALL | re.MULTILINE)
HUB_NAME = re.compile(r"hf-hub:([\w.-]+/[\w.-]+)")


def python_snippets() -> List[str]:
    return FENCE.findall(README.read_text(encoding='utf-8'))


def test_readme_has_the_quick_start():
    text = README.read_text(encoding='utf-8')
    assert text.count('make build') >= 1 and text.count('make test') >= 1
    snippets = python_snippets()
    assert any('timm.create_model' in s and 'pretrained=True' in s for s in snippets)
    assert any('hf-hub:' in s for s in snippets)
    assert any('mmdet' in s for s in snippets)


def _registry_folder_for(repo_id: str) -> Optional[Path]:
    """The shipped registry folder pushed as ``repo_id`` (None for a placeholder such as ``org/name``)."""
    from asvit_zoo.registry import load_registry

    for card in load_registry():
        for tag in card.tags():
            folder = card.folder(tag)
            if folder.config['pretrained_cfg'].get('hf_hub_id') == repo_id:
                return folder.path
    return None


@pytest.mark.parametrize('index', range(len(python_snippets())))
def test_snippet_runs(index: int, tmp_path: Path, hf_cache):
    snippet = python_snippets()[index]
    env = dict(os.environ)
    for repo_id in set(HUB_NAME.findall(snippet)):
        folder = _registry_folder_for(repo_id)
        if folder is None:
            continue
        hf_cache(tmp_path / 'hub', repo_id, folder)
        env.update(HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'hub'), HF_HOME=str(tmp_path / 'home'))
    result = subprocess.run([sys.executable, '-c', snippet], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f'README snippet {index + 1} failed:\n{snippet}\n{result.stderr[-3000:]}'
