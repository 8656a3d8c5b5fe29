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

from .fileio import write_json, write_text
from .genotype import Genotype

__all__ = ['RegistryError', 'VariantCard', 'registry_root', 'load_registry', 'load_card', 'write_card',
           'render_model_card']

CONFIG_FILE = 'config.json'
CARD_FILE = 'README.md'
REQUIRED_KEYS = frozenset({'architecture', 'num_classes', 'model_args', 'pretrained_cfg'})
# 'provenance': how the variant was made (seed, scaling step, measures, the command that regenerates it).
OPTIONAL_KEYS = frozenset({'num_features', 'global_pool', 'label_names', 'label_descriptions', 'provenance'})
DEFAULT_PRETRAINED_CFG = {
    'tag': '', 'input_size': [3, 224, 224], 'crop_pct': 0.9, 'interpolation': 'bicubic',
    'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'license': 'mit',
}
CITATION = '''@inproceedings{chen2022auto,
  title={Auto-scaling Vision Transformers without Training},
  author={Chen, Wuyang and Huang, Wei and Du, Xianzhi and Song, Xiaodan and Wang, Zhangyang and Zhou, Denny},
  booktitle={International Conference on Learning Representations},
  year={2022}
}'''
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


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    if isinstance(value, (list, tuple)):
        return ', '.join(_format_value(v) for v in value)
    if isinstance(value, str) and '|' in value:  # a genotype: code span, pipes escaped for the table
        return '`' + value.replace('|', '\\|') + '`'
    return str(value)


def render_model_card(config: Mapping[str, Any], description: str) -> str:
    """The README.md of a variant folder: Hub YAML metadata, description, genotype and provenance."""
    name, genotype = config['architecture'], config['model_args']['genotype']
    lines = ['---', 'library_name: timm', f"license: {config['pretrained_cfg'].get('license', 'mit')}", 'tags:',
             '- image-classification', '- timm', '- asvit', '---', f'# {name}', '', description, '',
             f'- Genotype: `{genotype}`', f"- Classes: {config['num_classes']}, features: {config.get('num_features')}",
             '- Weights: none (architecture card)', '']
    provenance = config.get('provenance')
    if provenance:
        lines += ['## Provenance', '', '| field | value |', '|---|---|']
        lines += [f'| {key} | {_format_value(value)} |' for key, value in provenance.items() if key != 'command']
        if 'command' in provenance:
            lines += ['', 'Regenerate with:', '', '```bash', provenance['command'], '```']
        lines.append('')
    lines += ['## Use', '', '```python', 'import asvit_zoo, timm', f"model = timm.create_model('{name}')", '```', '',
              '## Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)


def write_card(root: Path, name: str, genotype: Genotype, description: str,
               provenance: Optional[Mapping[str, Any]] = None, num_classes: int = 1000) -> VariantCard:
    """Write (atomically) ``root/name/config.json`` and its ``README.md``; return the validated card."""
    if genotype.is_seed:
        raise ValueError(f'variant {name}: a card needs a scaled genotype, got the seed {genotype}')
    config: Dict[str, Any] = {
        'architecture': name, 'num_classes': num_classes, 'num_features': genotype.stage_widths()[-1],
        'global_pool': 'avg', 'model_args': {'genotype': str(genotype)}, 'pretrained_cfg': dict(DEFAULT_PRETRAINED_CFG),
    }
    if provenance:
        config['provenance'] = dict(provenance)
    folder = Path(root) / name
    write_json(folder / CONFIG_FILE, config)
    write_text(folder / CARD_FILE, render_model_card(config, description))
    return load_card(folder)
