"""Atomic file writes: a temporary file in the same folder, fsync, then ``os.replace``; and folders written
whole (:func:`atomic_folder`).

A process killed mid-write leaves the previous file (or none), never a half-written one.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, IO, Iterator, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ['atomic_write', 'atomic_folder', 'check_folder', 'check_saved_run', 'new_figure', 'save_figure',
           'write_text', 'write_json', 'read_json', 'read_json_lines', 'save_torch', 'json_number']

PathLike = Union[str, os.PathLike]
TEMP_NAME_KEEP = 200  # characters of a file's name kept in its temporary name (names may have 255)


def _create_temp(path: Path) -> Tuple[int, Path]:
    """A new, empty temporary file beside ``path`` with the mode ``open`` would leave ``path`` with: that of the
    existing file, else 0o666 less the process umask (mkstemp's 0600 would make every written file private)."""
    while True:  # the name is cut so that a valid long name stays valid
        tmp = path.with_name(f'.{path.name[:TEMP_NAME_KEEP]}.{secrets.token_hex(6)}.tmp')
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0), 0o666)
        except FileExistsError:
            continue
        if path.is_file():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        return fd, tmp


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary binary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_folder(path: PathLike, what: str) -> Path:
    """``path`` as a Path; a ``ValueError`` naming ``what`` where it is empty (not the current folder), or where it,
    or the nearest of its parents that exists, is not a folder (so the folder cannot be made)."""
    if not str(path).strip():
        raise ValueError(f'{what} must be a path, got {str(path)!r}')
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f'{what} {path}: {existing} exists and is not a folder')
    return path


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 (whatever the locale), atomically."""
    return atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure(**kwargs)`` on a canvas of its own (Agg): no pyplot, so the user's backend (a
    notebook's, say) and pyplot's open figures stay as they are."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: PathLike, dpi: int) -> Path:
    """Save the matplotlib figure ``fig`` as a PNG, atomically."""
    return atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=dpi))


def json_number(value: Optional[float]) -> Optional[float]:
    """``value`` as standard JSON holds it: a float, or None (null) for NaN, an infinity or None."""
    return float(value) if value is not None and math.isfinite(value) else None


def write_json(path: PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + '\n')


def read_json(path: PathLike) -> Any:
    """The JSON value of a file; a damaged one is a ``ValueError`` that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(path, e) from None


def read_json_lines(path: PathLike) -> List[Any]:
    """The values of a JSON-lines file (blank lines skipped); a damaged line is a ``ValueError`` that names it."""
    path = Path(path)
    values = []
    try:
        for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
            if line.strip():
                values.append(json.loads(line))
    except json.JSONDecodeError as e:
        raise _damaged(path, f'line {number}: {e.msg}') from None
    except UnicodeDecodeError as e:
        raise _damaged(path, e) from None
    return values


def check_saved_run(value: Any, path: PathLike, what: str, keys: Sequence[str]) -> Dict[str, Any]:
    """``value``, read from the run file ``path``, if it is an object with ``keys`` (its ``config``, if one of them,
    an object too); otherwise a ``ValueError`` that names the file as not ``what``."""
    if not (isinstance(value, dict) and set(keys) <= value.keys()
            and ('config' not in keys or isinstance(value['config'], dict))):
        fields = ', '.join(f'"{key}"' for key in keys[:-1]) + f' and "{keys[-1]}"' if len(keys) > 1 else f'"{keys[0]}"'
        raise ValueError(f'{path}: not {what} (an object with {fields}); delete it, or start again in a new folder')
    return value


def _damaged(path: Path, reason: Any) -> ValueError:
    return ValueError(f'{path}: damaged, not valid JSON ({reason}); delete it, or start again in a new folder')


def save_torch(path: PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


@contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Yield an empty folder named like ``path`` inside a hidden temporary folder beside it; when the block ends
    without an error, it replaces ``path`` (an existing folder is moved aside first, then deleted). On an error,
    or a kill before the moves, ``path`` is left as it was; a partial folder is never seen under its name (a kill
    between the two moves leaves the previous folder in the hidden one). A ``path`` that is a file is refused
    (FileExistsError), before anything is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f'{path} exists and is not a folder; it would be replaced by one: move it away or '
                              f'choose another path')
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{path.name[:TEMP_NAME_KEEP]}.', suffix='.tmp', dir=path.parent))
    try:
        new = staging / 'new' / path.name  # not staging / path.name: a folder named 'previous' is replaced too
        new.mkdir(parents=True)
        yield new
        if path.exists():
            os.replace(path, staging / 'previous')
        os.replace(new, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
