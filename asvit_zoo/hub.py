"""Weights on the Hugging Face Hub: safetensors export, push, resolution (online, offline cache, local dir) and
integrity checks.

* :func:`export_weights` turns a training checkpoint into a registry folder ``<variant>.<tag>/`` laid out as a
  Hub model repo: ``model.safetensors`` (metadata: genotype, format, package version), ``config.json`` (timm's
  Hub format; the sha256 of the weights in its ``weights`` field) and a ``README.md`` model card.
* :func:`push_folder` uploads such a folder with ``huggingface_hub`` (token from ``HF_TOKEN`` or ``hf auth login``).
* :func:`resolve_weights` turns a resolved timm pretrained cfg into a verified local file: a registry file, a
  ``local-dir:`` folder or an ``hf-hub:`` repo fetched by ``hf_hub_download`` (which reads the local cache
  only under ``HF_HUB_OFFLINE=1``). Every failure is one :class:`WeightsError` that names the file, what was
  expected and what was found.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .fileio import check_folder, read_json
from .genotype import Genotype
from .registry import (CONFIG_FILE, DEFAULT_PRETRAINED_CFG, CARD_FILE, HUB_ID_PATTERN, MODEL_NAME_PATTERN, check_tag,
                       MODEL_NAME_RULE, VariantCard, check_folder_files, load_card, load_registry, registry_root,
                       write_variant_folder)

__all__ = ['WeightsError', 'HubUnavailableError', 'sha256_file', 'verify_sha256', 'read_metadata', 'check_genotype',
           'hub_file', 'local_dir_weights', 'hub_weights', 'resolve_weights', 'describe_mismatch',
           'state_dict_mismatch', 'allowed_globals',
           'load_torch_checkpoint', 'load_safetensors', 'safetensors_shapes', 'read_checkpoint', 'checkpoint_model',
           'export_weights', 'push_folder']

PathLike = Union[str, os.PathLike]
WEIGHTS_FILE = 'model.safetensors'  # timm's file name in a Hub repo
LOCAL_DIR_PREFIX = 'local-dir:'
HF_HUB_PREFIX = 'hf-hub:'
WEIGHTS_FORMAT = 'pt'  # safetensors' convention for torch tensors
_CHUNK = 1 << 20
_ERROR_LINES = 4  # lines of torch's load_state_dict error quoted in a mismatch error
_NETWORK_ERROR_CLASSES = ('ConnectionError', 'Timeout', 'TransportError')  # requests' and httpx's base classes
_UNSUPPORTED_GLOBAL = re.compile(r'Unsupported global: GLOBAL (\S+)')  # in torch's weights_only UnpicklingError
_WEIGHTS_UNPICKLER_REASON = re.compile(r'WeightsUnpickler error:\s*(.*?)\s*\n\s*\n', re.S)  # the same, its reason
# A trainer checkpoint stores numpy RNG states: these globals (and nothing else) are allowed when unpickling it.
_NUMPY_RNG_GLOBALS = [np.zeros(1).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class WeightsError(RuntimeError):
    """A weights file that is missing, corrupt, or does not fit the model it is loaded into."""


class HubUnavailableError(WeightsError, FileNotFoundError):
    """A Hub file that is neither in the local cache nor downloadable (offline mode or no network)."""


# --------------------------------------------------------------------------- integrity
def sha256_file(path: PathLike) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


_REEXPORT = 're-export it with `asvit export` or copy the repo folder again'
FINAL_METRICS = ('eval_top1', 'eval_top5', 'ema_top1', 'ema_top5', 'train_time', 'train_macs')  # in a provenance


def verify_sha256(path: PathLike, expected: str, fix: str = _REEXPORT) -> None:
    """Raise :class:`WeightsError` unless ``path`` exists and its sha256 is ``expected``; ``fix`` says what to do."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'{path}: weights file not found (expected a file with sha256 {expected}); {fix}')
    found = sha256_file(path)
    if found != expected:
        raise WeightsError(f'{path}: sha256 mismatch: expected {expected} (recorded in {CONFIG_FILE}), found {found} '
                           f'({path.stat().st_size} bytes); the file is truncated, corrupt or was replaced: {fix}')


def _unreadable_safetensors(path: PathLike, error: Exception) -> WeightsError:
    # safetensors raises its own SafetensorError, or OSError, for a file it cannot read
    return WeightsError(f'{path}: not a readable safetensors file (expected a header and tensors; it may be '
                        f'truncated or corrupt): {error}')


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The metadata of a safetensors file (empty if it has none); a file that is not safetensors is an error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework='pt') as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise _unreadable_safetensors(path, e) from None


def safetensors_shapes(path: PathLike) -> Dict[str, Tuple[int, ...]]:
    """The shape of each tensor of a safetensors file, from its header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework='pt') as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:
        raise _unreadable_safetensors(path, e) from None


def recorded_genotype(path: PathLike, metadata: Mapping[str, str]) -> Optional[Genotype]:
    """The genotype a safetensors file's ``metadata`` records (None without one)."""
    found = metadata.get('genotype')
    try:
        return None if found is None else Genotype.parse(found)
    except ValueError as e:
        raise WeightsError(f'{path}: the genotype in its metadata does not parse: {e}') from None


def check_genotype(path: PathLike, expected: Genotype) -> None:
    """Raise :class:`WeightsError` if the scaled genotype recorded in the file's metadata is not ``expected``
    (a seed genotype, without widths and depths, is left to the shape check of the load)."""
    metadata = read_metadata(path)
    stored = recorded_genotype(path, metadata)
    if stored is not None and not stored.is_seed and stored != expected:
        raise WeightsError(f'{path}: weights of another variant: expected genotype {expected}, found genotype '
                           f"{metadata['genotype']} (architecture {metadata.get('architecture', 'unknown')})")


def _recorded_sha256(config_path: Path, filename: str) -> Optional[str]:
    """The sha256 that the ``weights`` field of a Hub-format config.json records for ``filename`` (None without
    one)."""
    if not config_path.is_file():
        return None
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise WeightsError(f'{config_path}: expected a JSON object (a Hub-format config), found '
                           f'{type(config).__name__}')
    weights = config.get('weights')
    return weights.get('sha256') if isinstance(weights, dict) and weights.get('file') == filename else None


# --------------------------------------------------------------------------- resolution
def _split_revision(hub_id: str) -> Tuple[str, Optional[str]]:
    repo_id, _, revision = hub_id.partition('@')
    return repo_id, revision or None


def hub_file(hub_id: str, filename: str) -> Path:
    """A file of a Hub repo (``ORG/NAME`` or ``ORG/NAME@REVISION``), from the cache or downloaded.

    Under ``HF_HUB_OFFLINE=1`` only the cache is read, with no network attempt; a file that is not there (or
    cannot be downloaded) raises :class:`HubUnavailableError` with the ways to fix it.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (LocalEntryNotFoundError, OfflineModeIsEnabled, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    repo_id, revision = _split_revision(hub_id)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except RepositoryNotFoundError:  # also a gated repo
        raise WeightsError(f'{HF_HUB_PREFIX}{hub_id}: no model repo {repo_id!r} on the Hub ({constants.ENDPOINT}), or '
                           f'it is private or gated: check the name, or log in with `hf auth login`') from None
    except RevisionNotFoundError:
        raise WeightsError(f'{HF_HUB_PREFIX}{hub_id}: the repo {repo_id!r} has no revision {revision!r} (a branch, '
                           f'tag or commit)') from None
    except RemoteEntryNotFoundError:
        raise WeightsError(f'{HF_HUB_PREFIX}{hub_id}: the repo has no file {filename!r} (an As-ViT repo holds '
                           f'{CONFIG_FILE} and {WEIGHTS_FILE}, as `asvit export` writes them)') from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        reason = 'HF_HUB_OFFLINE=1 is set' if constants.HF_HUB_OFFLINE else 'the Hub cannot be reached'
        raise HubUnavailableError(
            f'{HF_HUB_PREFIX}{hub_id}: {filename} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and '
            f'{reason}. Fix: download it once while online (`hf download {repo_id}`), point HF_HUB_CACHE (or '
            f'HF_HOME) at a cache that holds it and set HF_HUB_OFFLINE=1, or load a copy of the repo folder with '
            f'{LOCAL_DIR_PREFIX}PATH') from None


def local_dir_weights(folder: PathLike) -> Path:
    """``folder/model.safetensors`` of a saved Hub repo, checked against the sha256 its config.json records."""
    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    _verify(path, _recorded_sha256(folder / CONFIG_FILE, WEIGHTS_FILE))
    return path


def hub_weights(hub_id: str, filename: str = WEIGHTS_FILE) -> Path:
    """A weights file of a Hub repo (see :func:`hub_file`), checked against the sha256 its config.json records."""
    path = hub_file(hub_id, filename)
    repo_id, revision = _split_revision(hub_id)
    revision = f' --revision {revision}' if revision else ''
    _verify(path, _recorded_sha256(hub_file(hub_id, CONFIG_FILE), filename),
            f'the Hugging Face cache keeps a damaged file, so download it anew: `hf download {repo_id} {filename}'
            f'{revision} --force-download`')
    return path


def _verify(path: Path, sha256: Optional[str], fix: str = _REEXPORT) -> None:
    if sha256 is not None:
        verify_sha256(path, sha256, fix)
    elif not path.is_file():
        raise WeightsError(f'{path}: weights file not found')


def resolve_weights(cfg: Mapping[str, Any], genotype: Genotype, sha256: Optional[str] = None) -> Optional[Path]:
    """The verified local weights file of a resolved timm pretrained cfg, or None where timm loads it itself
    (a ``url`` or an in-memory ``state_dict``).

    ``local-dir:`` folders and ``hf-hub:`` repos are checked against the sha256 of their config.json, a ``file``
    against ``sha256`` (the one its registry card records); every file against ``genotype``.
    """
    source = cfg.get('source') or ''
    if source == 'local-dir':
        path = local_dir_weights(cfg['file'])
    elif source == 'hf-hub' or (cfg.get('hf_hub_id') and not cfg.get('file') and not cfg.get('state_dict')):
        path = hub_weights(cfg['hf_hub_id'], cfg.get('hf_hub_filename') or WEIGHTS_FILE)
    elif cfg.get('file'):
        path = Path(cfg['file'])
        _verify(path, sha256)
    else:
        return None
    if path.suffix == '.safetensors':
        check_genotype(path, genotype)
    return path


def describe_mismatch(path: PathLike, variant: str, genotype: Genotype, error: Exception) -> WeightsError:
    """One clear error for weights that timm could not load into ``variant``: expected vs found shapes."""
    found = ''
    if Path(path).suffix == '.safetensors':
        meta = read_metadata(path)
        shapes = {k: v for k, v in safetensors_shapes(path).items()
                  if k in ('patch_embed.proj.weight', 'head.fc.weight')}
        found = f"; found genotype {meta.get('genotype', 'unknown (no metadata)')}, shapes {shapes}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    shown = lines[:_ERROR_LINES] + ([f'... ({len(lines) - _ERROR_LINES} more)'] if len(lines) > _ERROR_LINES else [])
    return WeightsError(f'{path}: does not fit {variant}: expected genotype {genotype}{found}. ' + '\n  '.join(shown))


def _shape(value: Any) -> Tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, 'shape') else tuple(value)


def state_dict_mismatch(found: Mapping[str, Any], expected: Mapping[str, Any], found_name: str, expected_name: str,
                        keys: bool = True) -> str:
    """How the tensors (or shapes) ``found`` differ from ``expected``, by key (unless ``keys`` is false: shapes
    of the shared keys only) and shape, one clause per kind with its count and first key in the order of its
    mapping (a model's state dict: forward order); '' when they fit::

        3 tensors of another shape (first: head.fc.weight (checkpoint (10, 32), model (1000, 32)))
    """
    found = {k: _shape(v) for k, v in found.items()}
    expected = {k: _shape(v) for k, v in expected.items()}
    kinds = [('tensors of another shape', [f'{k} ({found_name} {found[k]}, {expected_name} {shape})'
                                           for k, shape in expected.items() if k in found and found[k] != shape])]
    if keys:
        kinds = [(f'tensors of the {expected_name} missing', [k for k in expected if k not in found]),
                 (f'tensors not in the {expected_name}', [k for k in found if k not in expected])] + kinds
    return '; '.join(f'{len(items)} {what} (first: {items[0]})' for what, items in kinds if items)


# --------------------------------------------------------------------------- export
@contextmanager
def allowed_globals(safe: Sequence[Any]) -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` unpickle ``safe`` within the block; globals allowed before it (by
    ``torch.serialization.add_safe_globals``) stay allowed after it, which torch's ``safe_globals`` does not keep."""
    before = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([item for item in safe if item not in before]):
        yield


def load_torch_checkpoint(path: PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``, allowing the numpy RNG states of trainer checkpoints; a file
    torch cannot read (truncated, corrupt, not a checkpoint) or that holds objects of other classes is a
    :class:`WeightsError` that names it."""
    try:
        with allowed_globals(_NUMPY_RNG_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises RuntimeError, OSError, EOFError or UnpicklingError for unreadable files
        unsupported = _UNSUPPORTED_GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if unsupported is not None:
            raise WeightsError(f'{path}: a torch checkpoint holding objects of {unsupported.group(1)}, which '
                               f'weights_only loading does not allow (unpickling them could run code); load it where '
                               f'that class is allowed (torch.serialization.add_safe_globals), or save a plain state '
                               f'dict') from None
        found = _WEIGHTS_UNPICKLER_REASON.search(str(e))  # torch's advice around it spans several lines
        reason = found.group(1) if found else (str(e).strip().splitlines() or [''])[0]
        raise WeightsError(f'{path}: not a readable torch checkpoint (expected a file written by torch.save; it '
                           f'may be truncated or corrupt): {type(e).__name__}: {reason}') from None


def load_safetensors(path: PathLike) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file on the CPU; an unreadable file is a :class:`WeightsError` that names it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device='cpu')
    except Exception as e:
        raise _unreadable_safetensors(path, e) from None


def read_checkpoint(path: PathLike, ema: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(model state dict, trainer info) of a checkpoint: a trainer ``last.pth.tar`` (state under ``model``, or
    ``ema`` with ``ema=True``; info: its config, epoch, schedule and the genotype it trained), a plain state dict,
    or a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: checkpoint not found')
    if path.suffix == '.safetensors':
        return load_safetensors(path), {}
    checkpoint = load_torch_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path}: expected a trainer checkpoint or a state dict, found {type(checkpoint).__name__}')
    key = 'ema' if ema else 'model'
    if isinstance(checkpoint.get(key), dict):
        info = {k: checkpoint[k] for k in ('config', 'epoch', 'schedule', 'genotype') if k in checkpoint}
        return checkpoint[key], info
    if ema:
        raise ValueError(f'{path}: no EMA weights (the run was trained without --model-ema)')
    if isinstance(checkpoint.get('state_dict'), dict):  # another trainer's checkpoint (mmengine, Lightning, ...)
        checkpoint = checkpoint['state_dict']
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint, {}
    raise ValueError(f'{path}: expected a trainer checkpoint (with "model" or "state_dict") or a state dict, found '
                     f'keys {sorted(checkpoint)[:8]}')


def _dataset_cfg(train_cfg: Mapping[str, Any], in_chans: int) -> Dict[str, Any]:
    """mean, std and label names of the data a run was trained on (the trainer's normalisation)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from .datasets import FASHION_MNIST_CLASSES
    from .train import FASHION_MNIST, FASHION_MNIST_MEAN, FASHION_MNIST_STD, SYNTHETIC, SYNTHETIC_MEAN, SYNTHETIC_STD

    data = train_cfg.get('data')
    if data == FASHION_MNIST:
        return dict(mean=list(FASHION_MNIST_MEAN), std=list(FASHION_MNIST_STD), label_names=list(FASHION_MNIST_CLASSES))
    if data == SYNTHETIC:
        return dict(mean=list(SYNTHETIC_MEAN) * in_chans, std=list(SYNTHETIC_STD) * in_chans)
    if data:
        return dict(mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD))
    return dict(mean=DEFAULT_PRETRAINED_CFG['mean'][:in_chans], std=DEFAULT_PRETRAINED_CFG['std'][:in_chans])


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header in sorted key order.

    safetensors writes its header (tensor entries and ``__metadata__``) in hash-map order, which changes from one
    process to the next; sorted, equal tensors and metadata always give the same bytes and the same sha256. The
    data offsets are relative to the end of the header, so they stay valid; the header is padded with spaces to
    a multiple of 8 bytes, as safetensors does.
    """
    size = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(',', ':')).encode()
    text += b' ' * (-len(text) % 8)
    return len(text).to_bytes(8, 'little') + text + data[8 + size:]


def _pretrained_cfg(train_cfg: Mapping[str, Any], in_chans: int, tag: str = '') -> Dict[str, Any]:
    """timm pretrained cfg of weights trained with ``train_cfg``: its input size, normalisation and evaluation
    transform (the trainer's: in-memory sources are not cropped, an ImageFolder's images are resized and
    centre-cropped with the recipe's ``crop_pct`` and ``interpolation``)."""
    from .train import FASHION_MNIST, SYNTHETIC

    img_size = int(train_cfg.get('img_size', 224))
    dataset = _dataset_cfg(train_cfg, in_chans)
    if train_cfg.get('data') in (FASHION_MNIST, SYNTHETIC):
        transform = dict(crop_pct=1.0)
    elif train_cfg.get('data'):
        transform = {k: train_cfg[k] for k in ('crop_pct', 'interpolation') if k in train_cfg}
    else:  # weights without a recipe
        transform = dict(crop_pct=1.0 if img_size < 64 else DEFAULT_PRETRAINED_CFG['crop_pct'])
    return {**DEFAULT_PRETRAINED_CFG, 'tag': tag, 'input_size': [in_chans, img_size, img_size], **transform,
            'mean': dataset['mean'], 'std': dataset['std']}


def _trained_genotype(info: Mapping[str, Any]) -> Optional[str]:
    """The genotype a trainer checkpoint (its :func:`read_checkpoint` info) was trained with: the one it records,
    else (checkpoints written before it did) its config's genotype or that of its registered model name, tag
    dropped (the trainer builds ``create_model(model, genotype=...)``, so the genotype wins); None if unknown."""
    from timm.models import split_model_name_tag

    from .asvit import registered_card

    train_cfg = info.get('config') or {}
    card = registered_card(split_model_name_tag(train_cfg.get('model') or '')[0])
    return info.get('genotype') or train_cfg.get('genotype') or (str(card.genotype) if card is not None else None)


def _checkpoint_genotype(checkpoint: Path, info: Mapping[str, Any]) -> Genotype:
    text = _trained_genotype(info)
    if text is None:
        raise ValueError(f'{checkpoint}: no genotype (the checkpoint records none, none in its trainer config, and '
                         f'its model {(info.get("config") or {}).get("model")!r} is not a registered variant)')
    return Genotype.parse(text)


def checkpoint_model(checkpoint: PathLike, ema: bool = False) -> 'torch.nn.Module':
    """The As-ViT of a trainer checkpoint (``last.pth.tar``) with its weights, and a pretrained cfg (input
    size, normalisation) for the data it was trained on."""
    from .asvit import AsViT

    checkpoint = Path(checkpoint)
    state, info = read_checkpoint(checkpoint, ema=ema)
    train_cfg = info.get('config') or {}
    genotype = _checkpoint_genotype(checkpoint, info)
    state, in_chans, num_classes = _check_state(state, genotype, checkpoint)
    model = AsViT(genotype, num_classes=num_classes, in_chans=in_chans)
    model.load_state_dict(state, strict=True)
    model.pretrained_cfg = model.default_cfg = _pretrained_cfg(train_cfg, in_chans)
    return model


def _exported_info(weights: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(trainer info, final metrics) of an exported safetensors file: the scaled genotype its metadata records
    and, where the config.json beside it describes this very file (same sha256), the recipe, epoch, schedule and
    metrics of its provenance, so that a re-export (another tag, a Hub id) keeps its input size, normalisation
    and labels."""
    info: Dict[str, Any] = {}
    genotype = recorded_genotype(weights, read_metadata(weights))
    if genotype is not None and not genotype.is_seed:
        info['genotype'] = str(genotype)
    config_path = weights.parent / CONFIG_FILE
    if _recorded_sha256(config_path, weights.name) != sha256_file(weights):
        return info, {}
    provenance = load_card(weights.parent, check_name=False).config.get('provenance', {})
    recorded = {'config': provenance.get('recipe'), 'epoch': provenance.get('epoch'),
                'schedule': provenance.get('retokenization')}
    info.update({k: v for k, v in recorded.items() if v is not None})
    return info, {k: provenance[k] for k in FINAL_METRICS if k in provenance}


def _final_metrics(checkpoint: Path) -> Dict[str, Any]:
    """The last record of the run's metrics.jsonl (beside the checkpoint), reduced to the headline numbers."""
    from .train import METRICS, read_metrics

    path = checkpoint.parent / METRICS
    if not path.is_file():
        return {}
    records = read_metrics(path)
    return {k: records[-1][k] for k in FINAL_METRICS if records and k in records[-1]}


def _check_state(state: Mapping[str, torch.Tensor], genotype: Genotype,
                 checkpoint: Path) -> Tuple[Dict[str, torch.Tensor], int, int]:
    """(state dict in our layout, in_chans, num_classes) of a state dict that loads strictly into an As-ViT of
    ``genotype``."""
    from .asvit import AsViT, checkpoint_filter_fn

    state = checkpoint_filter_fn(dict(state), None)
    shape = state.get('patch_embed.proj.weight')
    fc = state.get('head.fc.weight')
    if shape is None:
        raise ValueError(f'{checkpoint}: no patch_embed.proj.weight: not an As-ViT state dict')
    in_chans, num_classes = int(shape.shape[1]), int(fc.shape[0]) if fc is not None else 0
    with torch.device('meta'):
        model = AsViT(genotype, num_classes=num_classes, in_chans=in_chans)
    problems = state_dict_mismatch(state, model.state_dict(), 'checkpoint', 'model')
    if problems:
        raise ValueError(f'{checkpoint}: weights do not fit genotype {genotype}: {problems}')
    return state, in_chans, num_classes


def _command(checkpoint: Path, variant: str, tag: str, genotype: Genotype, root: Path, hf_hub_id: Optional[str],
             ema: bool) -> str:
    parts = ['asvit', 'export', str(checkpoint), '--variant', variant, '--tag', tag, '--genotype', str(genotype)]
    parts += ['--registry', str(root)] if root != registry_root() else []
    parts += ['--hf-hub-id', hf_hub_id] if hf_hub_id else []
    return shlex.join(parts + (['--ema'] if ema else []))


def export_weights(checkpoint: PathLike, variant: str, tag: str, root: Optional[PathLike] = None,
                   hf_hub_id: Optional[str] = None, ema: bool = False, genotype: Optional[str] = None,
                   description: Optional[str] = None) -> VariantCard:
    """Write ``root/<variant>.<tag>/`` (model.safetensors, config.json, README.md) from a checkpoint.

    The genotype is that of ``variant`` in ``root`` or registered with timm (``genotype``, if given, must be the
    same); a new variant is defined by the tagged folder, with ``genotype`` or the one of the trainer's config (of
    an exported safetensors file: its metadata's; the card beside it gives the recipe, see :func:`_exported_info`).
    The folder is written whole or not at all (it replaces an earlier export of the same name only once its card
    validates). Returns the validated card.
    """
    from safetensors.torch import save

    from . import __version__
    from .asvit import check_architecture_name, registered_card

    if not MODEL_NAME_PATTERN.match(variant):
        raise ValueError(f'variant must be a model name ({MODEL_NAME_RULE}), got {variant!r}')
    check_architecture_name(variant)
    check_tag(tag)
    if hf_hub_id is not None and not HUB_ID_PATTERN.match(hf_hub_id):
        raise ValueError(f'hf_hub_id must be a Hub repo id ORG/NAME, got {hf_hub_id!r}')
    checkpoint = Path(checkpoint)
    root = registry_root() if root is None else check_folder(root, 'registry')
    if ema and checkpoint.suffix == '.safetensors':
        raise ValueError(f'{checkpoint}: ema needs a trainer checkpoint (last.pth.tar); a safetensors file holds '
                         f'one set of weights')
    state, info = read_checkpoint(checkpoint, ema=ema)
    exported_metrics: Dict[str, Any] = {}
    if checkpoint.suffix == '.safetensors':
        info, exported_metrics = _exported_info(checkpoint)
    train_cfg = info.get('config') or {}
    # the cards alone: a folder whose weights are damaged is the one a re-export repairs
    known = {card.name: card for card in load_registry(root, check_files=False)} if root.is_dir() else {}
    card = known.get(variant) or registered_card(variant)
    trained = _trained_genotype(info)
    text = str(card.genotype) if card is not None else genotype or trained
    if text is None:
        raise ValueError(f'{variant} is neither in {root} nor a registered variant: pass the genotype of the new '
                         f'variant (--genotype)')
    parsed = Genotype.parse(text)
    if genotype is not None and Genotype.parse(genotype) != parsed:
        raise ValueError(f'{variant} has genotype {parsed} ({card.path}); genotype {genotype} differs: export it '
                         f'under another variant name')
    if checkpoint.suffix == '.safetensors':
        check_genotype(checkpoint, parsed)
    if trained is not None and Genotype.parse(trained) != parsed:
        raise ValueError(f'{checkpoint}: trained genotype {trained} is not the genotype {parsed} of {variant}')
    state, in_chans, num_classes = _check_state(state, parsed, checkpoint)
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    metadata = {'format': WEIGHTS_FORMAT, 'genotype': str(parsed), 'architecture': variant,
                'asvit_zoo_version': __version__}
    data = canonical_safetensors(save(tensors, metadata))
    dataset = _dataset_cfg(train_cfg, in_chans)  # label names
    pretrained_cfg = _pretrained_cfg(train_cfg, in_chans, tag)
    img_size = pretrained_cfg['input_size'][-1]
    if hf_hub_id:
        pretrained_cfg['hf_hub_id'] = hf_hub_id
    provenance: Dict[str, Any] = {
        'checkpoint': str(checkpoint), 'epoch': info.get('epoch'), 'weights': 'ema' if ema else 'model',
        'data': train_cfg.get('data'), 'retokenization': info.get('schedule', train_cfg.get('retokenization')),
        **exported_metrics, **_final_metrics(checkpoint), 'asvit_zoo_version': __version__,
        'torch_version': torch.__version__,
    }
    if train_cfg:
        provenance['recipe'] = dict(train_cfg)
    provenance['command'] = _command(checkpoint, variant, tag, parsed, root, hf_hub_id, ema)
    config: Dict[str, Any] = {
        'architecture': variant, 'num_classes': num_classes, 'num_features': parsed.stage_widths()[-1],
        'global_pool': 'avg', 'model_args': {'genotype': str(parsed)}, 'pretrained_cfg': pretrained_cfg,
        **({'label_names': dataset['label_names']} if 'label_names' in dataset and num_classes == len(
            dataset['label_names']) else {}),
        'weights': {'file': WEIGHTS_FILE, 'sha256': hashlib.sha256(data).hexdigest(), 'bytes': len(data)},
        'provenance': {k: v for k, v in provenance.items() if v is not None},
    }
    text = description or (f'As-ViT {variant} trained on {train_cfg.get("data", "unknown data")} '
                           f'({img_size}x{img_size}, {num_classes} classes), exported by asvit-zoo.')
    return write_variant_folder(root / f'{variant}.{tag}', config, text, {WEIGHTS_FILE: data})


# --------------------------------------------------------------------------- push
def push_folder(folder: PathLike, repo_id: str, token: Optional[str] = None, private: bool = False,
                commit_message: Optional[str] = None) -> str:
    """Create ``repo_id`` if needed and upload a registry folder to it; returns the commit URL.

    The token comes from ``token``, else from ``HF_TOKEN`` or the ``hf auth login`` config (huggingface_hub's
    usual lookup). The folder is checked first: a card that fails validation or weights that do not match
    their recorded sha256 are not uploaded.
    """
    from huggingface_hub import HfApi

    if not (isinstance(repo_id, str) and HUB_ID_PATTERN.match(repo_id)):
        raise ValueError(f'repo must be a Hub repo id ORG/NAME, got {repo_id!r}')
    folder = Path(folder)
    card = load_card(folder)
    check_folder_files(card)
    sha256 = card.weights_sha256(card.tag)
    if sha256 is None:
        raise ValueError(f'{folder}: no weights to push (config.json has no "weights" field); run `asvit export`')
    verify_sha256(card.weights_file(card.tag), sha256)
    hub_id = card.config['pretrained_cfg'].get('hf_hub_id')
    if hub_id and _split_revision(hub_id)[0] != repo_id:
        raise ValueError(f'{folder}: its pretrained_cfg.hf_hub_id is {hub_id!r}, not {repo_id!r}; re-export with '
                         f'--hf-hub-id {repo_id}')
    api = HfApi(token=token)
    allow = [CONFIG_FILE, CARD_FILE, card.config['weights']['file']]
    try:
        api.create_repo(repo_id, repo_type='model', private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type='model', allow_patterns=allow,
                                 commit_message=commit_message or f'Upload {folder.name} with asvit-zoo')
    except Exception as e:
        if not _is_network_error(e):
            raise
        raise HubUnavailableError(f'{folder.name}: cannot push to {repo_id}: the Hub ({api.endpoint}) cannot be '
                                  f'reached ({type(e).__name__}: {e}); no commit was made. Check the network (or '
                                  f'HF_ENDPOINT, and that HF_HUB_OFFLINE is not set) and push again') from None
    return str(info)


def _is_network_error(error: Exception) -> bool:
    """Whether ``error`` means the Hub was not reached (no answer): offline mode, a refused or failed connection,
    a timeout. huggingface_hub raises its HTTP backend's errors here (requests, httpx or httpx2, by version),
    so they are recognised by the names of their base classes."""
    return isinstance(error, (ConnectionError, TimeoutError)) or any(
        cls.__name__ in _NETWORK_ERROR_CLASSES for cls in type(error).__mro__)
