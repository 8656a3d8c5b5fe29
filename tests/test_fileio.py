"""Atomic writes: the old file or the new one, never half of one, with the mode ``open`` would give."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from asvit_zoo.fileio import (atomic_folder, atomic_write, check_folder, read_json, read_json_lines, save_figure,
                              write_json, write_text)

posix_only = pytest.mark.skipif(sys.platform == 'win32', reason='POSIX file modes')


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


@posix_only
def test_new_file_has_the_mode_open_gives(tmp_path: Path, umask_027) -> None:
    path = write_text(tmp_path / 'sub' / 'a.txt', 'hello')
    assert path.read_text() == 'hello'
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.listdir(path.parent) == ['a.txt']


@posix_only
def test_an_existing_file_keeps_its_mode(tmp_path: Path, umask_027) -> None:
    path = write_text(tmp_path / 'private.json', '{}')
    os.chmod(path, 0o600)
    write_json(path, {'a': 1})
    assert os.stat(path).st_mode & 0o777 == 0o600 and read_json(path) == {'a': 1}


def test_check_folder_refuses_an_empty_path(tmp_path: Path) -> None:
    for empty in ('', ' '):
        with pytest.raises(ValueError, match=f'^run folder must be a path, got {empty!r}$'):
            check_folder(empty, 'run folder')
    assert check_folder(str(tmp_path / 'new'), 'run folder') == tmp_path / 'new'


def test_a_long_valid_name_can_be_written(tmp_path: Path) -> None:
    path = write_json(tmp_path / ('a' * 245 + '.json'), [1])  # 250 characters: the temporary name is cut
    assert read_json(path) == [1] and os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize('name', ['variant', 'previous', 'new'])
def test_atomic_folder_replaces_a_folder_of_any_name(tmp_path: Path, name: str) -> None:
    for text in ('first', 'second'):
        with atomic_folder(tmp_path / name) as folder:
            write_text(folder / 'card.txt', text)
    assert (tmp_path / name / 'card.txt').read_text() == 'second' and os.listdir(tmp_path) == [name]
    with atomic_folder(tmp_path / name):
        pass  # an empty new folder replaces the old one
    assert os.listdir(tmp_path / name) == []


def test_atomic_folder_refuses_to_replace_a_file(tmp_path: Path) -> None:
    path = write_text(tmp_path / 'asvit_tiny.foo', 'important')
    with pytest.raises(FileExistsError, match='asvit_tiny.foo exists and is not a folder; it would be replaced'):
        with atomic_folder(path):
            pass
    assert path.read_text() == 'important' and os.listdir(tmp_path) == [path.name]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = write_text(tmp_path / 'a.txt', 'old')

    def half(f) -> None:
        f.write(b'new, half')
        raise RuntimeError('killed mid-write')

    with pytest.raises(RuntimeError, match='killed mid-write'):
        atomic_write(path, half)
    assert path.read_text() == 'old'
    assert os.listdir(tmp_path) == ['a.txt']


@posix_only
def test_threads_writing_at_once_all_get_whole_files_and_the_mode(tmp_path: Path, umask_027) -> None:
    paths = [tmp_path / f'{i}.json' for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: write_json(p, {'name': p.name, 'data': list(range(1000))}), paths))
    for p in paths:
        assert p.read_text().startswith('{\n  "name": "' + p.name)
        assert os.stat(p).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)


def test_damaged_json_files_are_named(tmp_path: Path) -> None:
    path = write_json(tmp_path / 'a.json', {'a': [1, 2]})
    assert read_json(path) == {'a': [1, 2]}
    path.write_text('{"a": [1, ')
    with pytest.raises(ValueError, match=f'{path}: damaged, not valid JSON .*delete it, or start again'):
        read_json(path)
    lines = write_text(tmp_path / 'b.jsonl', '{"a": 1}\n\n{"a": 2}\n')
    assert read_json_lines(lines) == [{'a': 1}, {'a': 2}]
    lines.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r'b.jsonl: damaged, not valid JSON \(line 2: Expecting value\)'):
        read_json_lines(lines)
    lines.write_bytes(b'{"a": "\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r'b.jsonl: damaged, not valid JSON .*utf-8'):
        read_json_lines(lines)


def test_text_is_written_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / 'card.md'
    text = 'Tiny \u2014 28\u00d728'
    code = f'from asvit_zoo.fileio import write_text; write_text({str(path)!r}, {ascii(text)})'
    env = dict(os.environ, LC_ALL='C', LANG='C', PYTHONUTF8='0', PYTHONIOENCODING='ascii')
    result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert path.read_bytes() == text.encode('utf-8')


def test_figures_are_saved_whole_or_not_at_all(tmp_path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / 'plot.png', dpi=50)
    first = path.read_bytes()
    assert first[:8] == b'\x89PNG\r\n\x1a\n'

    def fail(file, **kwargs):  # noqa: ANN001  (a savefig that dies halfway through the file)
        file.write(first[:100])
        raise KeyboardInterrupt

    fig.savefig = fail
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, path, dpi=50)
    plt.close(fig)
    assert path.read_bytes() == first and [p.name for p in tmp_path.iterdir()] == ['plot.png']
