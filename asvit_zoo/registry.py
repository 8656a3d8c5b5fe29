"""The variant registry: one folder per variant under ``registry/``, laid out as a Hub model repo.

Each folder holds ``config.json`` in timm's Hub format (architecture, num_classes, model_args with the
genotype, pretrained_cfg) and a ``README.md`` model card. The cards are the single source of truth:
``import asvit_zoo`` registers one timm model per card.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from .genotype import Genotype

__all__ = ['RegistryError', 'VariantCard', 'registry_root', 'load_registry', 'load_card']

CONFIG_FILE = 'config.json'
CARD_FILE = 'README.md'
REQUIRED_KEYS = frozenset({'architecture', 'num_classes', 'model_args', 'pretrained_cfg'})
OPTIONAL_KEYS = frozenset({'num_features', 'global_pool', 'label_names', 'label_descriptions'})
MODEL_ARG_KEYS = frozenset({'genotype'})


class RegistryError(ValueError):
    """A registry card that does not follow the format."""


@dataclass(frozen=True)
class VariantCard:
    """One registry folder: a named variant, its genotype and its pretrained configuration."""

    name: str
    path: Path
    genotype: Genotype
    config: Mapping[str, Any] = field(repr=False)

    @property
    def model_args(self) -> Dict[str, Any]:
        return {'genotype': str(self.genotype)}

    def tags(self) -> List[str]:
        """Pretrained tags of this variant ('' is the untagged default)."""
        return [self.config['pretrained_cfg'].get('tag', '')]

    def pretrained_cfg(self, tag: str = '') -> Dict[str, Any]:
        """The variant's timm pretrained cfg for ``tag`` (lists become tuples, as timm expects)."""
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in self.config['pretrained_cfg'].items()}
        cfg.pop('tag', None)
        cfg['num_classes'] = self.config['num_classes']
        return cfg


def registry_root() -> Path:
    """The folder of the registry shipped with the package (``registry/`` in a source checkout)."""
    return Path(str(resources.files('asvit_zoo._registry')))


def _fail(path: Path, message: str) -> RegistryError:
    return RegistryError(f'{path}: {message}')


def load_card(folder: Path) -> VariantCard:
    """Read and validate one variant folder."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise _fail(folder, f'missing {CONFIG_FILE} (every variant folder needs one)')
    try:
        config = json.loads(config_path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise _fail(config_path, f'not valid JSON: {e}') from None
    if not isinstance(config, dict):
        raise _fail(config_path, f'expected a JSON object, got {type(config).__name__}')
    missing = sorted(REQUIRED_KEYS - config.keys())
    if missing:
        raise _fail(config_path, f'missing required field(s) {missing}; required: {sorted(REQUIRED_KEYS)}')
    unknown = sorted(config.keys() - REQUIRED_KEYS - OPTIONAL_KEYS)
    if unknown:
        raise _fail(config_path, f'unknown field(s) {unknown}; allowed: {sorted(REQUIRED_KEYS | OPTIONAL_KEYS)}')
    if config['architecture'] != folder.name:
        raise _fail(config_path, f"architecture {config['architecture']!r} does not match its folder name "
                                 f'{folder.name!r}')
    model_args = config['model_args']
    if not isinstance(model_args, dict) or 'genotype' not in model_args:
        raise _fail(config_path, f'model_args must be an object with a "genotype", got {model_args!r}')
    unknown = sorted(model_args.keys() - MODEL_ARG_KEYS)
    if unknown:
        raise _fail(config_path, f'unknown model_args field(s) {unknown}; allowed: {sorted(MODEL_ARG_KEYS)}')
    try:
        genotype = Genotype.parse(model_args['genotype'])
    except ValueError as e:
        raise _fail(config_path, f'model_args.genotype does not parse: {e}') from None
    if genotype.is_seed:
        raise _fail(config_path, f'model_args.genotype must be in the scaled form K,S,E,L|...|H,C, got {genotype}')
    if not isinstance(config['num_classes'], int) or config['num_classes'] < 0:
        raise _fail(config_path, f"num_classes must be an integer >= 0, got {config['num_classes']!r}")
    if 'num_features' in config and config['num_features'] != genotype.stage_widths()[-1]:
        raise _fail(config_path, f"num_features {config['num_features']} does not match the genotype's last stage "
                                 f'width {genotype.stage_widths()[-1]}')
    if not isinstance(config['pretrained_cfg'], dict):
        raise _fail(config_path, 'pretrained_cfg must be an object')
    return VariantCard(name=folder.name, path=folder, genotype=genotype, config=config)


def load_registry(root: Optional[Path] = None) -> List[VariantCard]:
    """All variant cards under ``root`` (default: the shipped registry), sorted by name."""
    root = registry_root() if root is None else Path(root)
    folders: Iterable[Path] = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(('_', '.')))
    return [load_card(folder) for folder in folders]
