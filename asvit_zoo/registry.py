"""The variant registry: one folder per Hub model repo under ``registry/``.

Each folder holds ``config.json`` in timm's Hub format (architecture, num_classes, model_args with the
genotype, pretrained_cfg) and a ``README.md`` model card. A folder named after its architecture
(``asvit_small/``) is an architecture card; a folder ``<architecture>.<tag>/`` (``asvit_small.fmnist/``)
adds the pretrained tag ``tag`` to that architecture and holds its weights (``model.safetensors``, whose
sha256 is recorded in the ``weights`` field). The cards are the single source of truth: ``import asvit_zoo``
registers one timm model per architecture, with one pretrained cfg per tag.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from timm.models import PretrainedCfg

from .fileio import atomic_folder, atomic_write, write_json, write_text
from .genotype import Genotype
from .validation import is_count

__all__ = ['RegistryError', 'VariantCard', 'registry_root', 'load_registry', 'load_card', 'check_folder_files',
           'write_card', 'write_variant_folder', 'render_model_card']

CONFIG_FILE = 'config.json'
CARD_FILE = 'README.md'
REQUIRED_KEYS = frozenset({'architecture', 'num_classes', 'model_args', 'pretrained_cfg'})
# 'provenance': how the variant was made (seed, scaling step, measures, training run, the command that regenerates
# it); 'weights': the weights file of a tagged folder and its sha256 ({"file": ..., "sha256": ..., "bytes": ...}).
OPTIONAL_KEYS = frozenset({'num_features', 'global_pool', 'label_names', 'label_descriptions', 'provenance',
                           'weights'})
WEIGHTS_KEYS = frozenset({'file', 'sha256', 'bytes'})
SHA256_PATTERN = re.compile(r'^[0-9a-f]{64}$')
HUB_ID_PATTERN = re.compile(r'^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$')
MODEL_NAME_PATTERN = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')  # a timm model name (the part before `.tag`)
MODEL_NAME_RULE = 'a letter, then letters, digits or "_"'  # MODEL_NAME_PATTERN in words, for error messages
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
REGISTRY_ENV = 'ASVIT_ZOO_REGISTRY'


class RegistryError(ValueError):
    """A registry card that does not follow the format."""


@dataclass(frozen=True)
class VariantCard:
    """A named variant (architecture), its genotype and its pretrained configurations.

    ``path`` and ``config`` are those of the architecture's own folder (of its first tagged folder where it has
    none); ``tagged`` holds the cards of its ``<name>.<tag>`` folders by tag.
    """

    name: str
    path: Path
    genotype: Genotype
    config: Mapping[str, Any] = field(repr=False)
    tagged: Mapping[str, 'VariantCard'] = field(default_factory=dict, repr=False)

    @property
    def model_args(self) -> Dict[str, Any]:
        return {'genotype': str(self.genotype)}

    @property
    def tag(self) -> str:
        """The pretrained tag of this card's own folder ('' for an architecture card)."""
        return self.config['pretrained_cfg'].get('tag', '')

    def tags(self) -> List[str]:
        """Pretrained tags of this variant, the default first ('' is the untagged architecture card)."""
        return list(dict.fromkeys([self.tag, *sorted(self.tagged)]))

    def folder(self, tag: str = '') -> 'VariantCard':
        """The card of the folder that defines ``tag``."""
        if tag in self.tagged:
            return self.tagged[tag]
        if tag != self.tag:
            raise KeyError(f'{self.name} has no pretrained tag {tag!r}; tags: {self.tags()}')
        return self

    def weights_file(self, tag: str = '') -> Optional[Path]:
        """The local weights file of ``tag``, or None where the tag has no ``weights`` field."""
        card = self.folder(tag)
        weights = card.config.get('weights')
        return card.path / weights['file'] if weights else None

    def weights_sha256(self, tag: str = '') -> Optional[str]:
        """The recorded sha256 of the weights file of ``tag`` (None without one)."""
        weights = self.folder(tag).config.get('weights')
        return weights['sha256'] if weights else None

    def pretrained_cfg(self, tag: str = '') -> Dict[str, Any]:
        """The variant's timm pretrained cfg for ``tag`` (lists become tuples, as timm expects); a tag with
        weights gets ``file``, the weights in its registry folder (so that it loads without a network)."""
        card = self.folder(tag)
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in card.config['pretrained_cfg'].items()}
        cfg.pop('tag', None)
        cfg['num_classes'] = card.config['num_classes']
        if 'label_names' in card.config:
            cfg['label_names'] = tuple(card.config['label_names'])
        weights_file = self.weights_file(tag)
        if weights_file is not None:
            cfg['file'] = str(weights_file)
        return cfg


def registry_root() -> Path:
    """The folder of the registry shipped with the package (``registry/`` in a source checkout)."""
    return Path(str(resources.files('asvit_zoo._registry')))


def extra_registries() -> List[Path]:
    """Registry folders named by ``ASVIT_ZOO_REGISTRY`` (``os.pathsep``-separated), registered on import beside
    the shipped one: the registry an ``asvit build`` wrote, for example."""
    value = os.environ.get(REGISTRY_ENV, '')
    folders = [Path(p) for p in value.split(os.pathsep) if p.strip()]
    for folder in folders:
        if not folder.is_dir():
            raise RegistryError(f'{REGISTRY_ENV}={value!r}: {folder} is not a folder (expected registry folders '
                                f'separated by {os.pathsep!r}, each with one sub-folder per variant)')
    return folders


def _fail(path: Path, message: str) -> RegistryError:
    return RegistryError(f'{path}: {message}')


def load_card(folder: Path, check_name: bool = True) -> VariantCard:
    """Read and validate one variant folder. ``check_name=False`` accepts any folder name (a Hub snapshot, a
    ``local-dir:`` copy): the card's name is then its ``architecture`` alone."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise _fail(folder, f'missing {CONFIG_FILE} (every variant folder needs one)')
    try:
        config = json.loads(config_path.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(config_path, f'not valid JSON: {e}') from None
    return card_from_config(config, folder, check_name)


def card_from_config(config: Any, folder: Path, check_name: bool = True) -> VariantCard:
    """Validate ``config`` (the parsed config.json, or a config about to be written; compared as JSON) as the card
    of the variant folder ``folder``, which need not exist yet; errors name ``folder / config.json``.
    ``check_name`` as in :func:`load_card`."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    config = json.loads(json.dumps(config))
    if not isinstance(config, dict):
        raise _fail(config_path, f'expected a JSON object, got {type(config).__name__}')
    missing = sorted(REQUIRED_KEYS - config.keys())
    if missing:
        raise _fail(config_path, f'missing required field(s) {missing}; required: {sorted(REQUIRED_KEYS)}')
    unknown = sorted(config.keys() - REQUIRED_KEYS - OPTIONAL_KEYS)
    if unknown:
        raise _fail(config_path, f'unknown field(s) {unknown}; allowed: {sorted(REQUIRED_KEYS | OPTIONAL_KEYS)}')
    if not isinstance(config['pretrained_cfg'], dict):
        raise _fail(config_path, 'pretrained_cfg must be an object')
    _check_pretrained_cfg(config_path, config['pretrained_cfg'])
    if not (isinstance(config['architecture'], str) and MODEL_NAME_PATTERN.match(config['architecture'])):
        raise _fail(config_path, f"architecture must be a model name ({MODEL_NAME_RULE}), got "
                                 f"{config['architecture']!r}")
    tag = config['pretrained_cfg'].get('tag', '')
    if check_name and folder.name not in (config['architecture'], f"{config['architecture']}.{tag}"):
        expected = f"{config['architecture']!r}" + (f" or {config['architecture'] + '.' + tag!r}" if tag else '')
        raise _fail(config_path, f"architecture {config['architecture']!r} does not match its folder name "
                                 f'{folder.name!r}: expected the folder {expected} (pretrained_cfg.tag {tag!r})')
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
    if isinstance(config['num_classes'], bool) or not isinstance(config['num_classes'], int) or \
            config['num_classes'] < 0:
        raise _fail(config_path, f"num_classes must be an integer >= 0, got {config['num_classes']!r}")
    if 'num_features' in config and config['num_features'] != genotype.stage_widths()[-1]:
        raise _fail(config_path, f"num_features {config['num_features']} does not match the genotype's last stage "
                                 f'width {genotype.stage_widths()[-1]}')
    hub_id = config['pretrained_cfg'].get('hf_hub_id')
    if hub_id is not None and not (isinstance(hub_id, str) and HUB_ID_PATTERN.match(hub_id)):
        raise _fail(config_path, f'pretrained_cfg.hf_hub_id must be a Hub repo id ORG/NAME, got {hub_id!r}')
    _check_optional_fields(config_path, config)
    return VariantCard(name=config['architecture'], path=folder, genotype=genotype, config=config)


def _check_pretrained_cfg(config_path: Path, cfg: Mapping[str, Any]) -> None:
    """The fields timm reads from a card's ``pretrained_cfg``: known to timm, with a string tag and an input size
    (C, H, W) whose mean and std have one value per channel."""
    unknown = sorted(cfg.keys() - {f.name for f in dataclasses.fields(PretrainedCfg)})
    if unknown:
        raise _fail(config_path, f"unknown pretrained_cfg field(s) {unknown}; allowed: timm's PretrainedCfg fields")
    if not isinstance(cfg.get('tag', ''), str):
        raise _fail(config_path, f"pretrained_cfg.tag must be a string, got {cfg['tag']!r}")
    size = cfg.get('input_size', DEFAULT_PRETRAINED_CFG['input_size'])
    if not (isinstance(size, list) and len(size) == 3 and all(map(is_count, size))):
        raise _fail(config_path, f'pretrained_cfg.input_size must be [C, H, W], three integers >= 1, got {size!r}')
    for key in ('mean', 'std'):
        values, default = cfg.get(key), DEFAULT_PRETRAINED_CFG[key]
        if values is None and size[0] != len(default):
            raise _fail(config_path, f'pretrained_cfg.{key} is required for input_size {size}: the default '
                                     f'{default} is for {len(default)} channels')
        if values is not None and not (isinstance(values, list) and len(values) == size[0] and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise _fail(config_path, f'pretrained_cfg.{key} must list one number per input channel ({size[0]}, '
                                     f'from input_size {size}), got {values!r}')


def _check_optional_fields(config_path: Path, config: Mapping[str, Any]) -> None:
    """The optional fields of a card, where present: what our loaders and timm read from them."""
    pool = config.get('global_pool', 'avg')
    if pool != 'avg':
        raise _fail(config_path, f"global_pool must be 'avg' (registered variants average their tokens), got {pool!r}")
    names = config.get('label_names', [])
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)) or \
            names and len(names) != config['num_classes']:
        raise _fail(config_path, f"label_names must list one string per class (num_classes "
                                 f"{config['num_classes']}), got {names!r}")
    descriptions = config.get('label_descriptions', {})
    if not (isinstance(descriptions, dict) and all(isinstance(d, str) for d in descriptions.values())):
        raise _fail(config_path, f'label_descriptions must be an object of strings (label -> description), got '
                                 f'{descriptions!r}')
    if not isinstance(config.get('provenance', {}), dict):
        raise _fail(config_path, f"provenance must be an object, got {config['provenance']!r}")
    if 'weights' in config:
        _check_weights(config_path, config['weights'])


def _check_weights(config_path: Path, weights: Any) -> None:
    if not isinstance(weights, dict) or not {'file', 'sha256'} <= weights.keys():
        raise _fail(config_path, f'weights must be an object with "file" and "sha256", got {weights!r}')
    unknown = sorted(weights.keys() - WEIGHTS_KEYS)
    if unknown:
        raise _fail(config_path, f'unknown weights field(s) {unknown}; allowed: {sorted(WEIGHTS_KEYS)}')
    file = weights['file']
    if not isinstance(file, str) or not file.endswith('.safetensors') or Path(file).name != file:
        raise _fail(config_path, f'weights.file must be a .safetensors file name in the folder, got {file!r}')
    if not isinstance(weights['sha256'], str) or not SHA256_PATTERN.match(weights['sha256']):
        raise _fail(config_path, f"weights.sha256 must be 64 lowercase hex digits, got {weights['sha256']!r}")
    if 'bytes' in weights and not is_count(weights['bytes']):
        raise _fail(config_path, f"weights.bytes must be the file's size, an integer >= 1, got {weights['bytes']!r}")


def check_folder_files(card: VariantCard) -> None:
    """The files a registry folder lists are there: its model card and, where the card has a ``weights`` field,
    the weights file, of the recorded size (the sha256 is checked where the weights are read)."""
    if not (card.path / CARD_FILE).is_file():
        raise _fail(card.path, f'missing {CARD_FILE} (every variant folder needs its model card)')
    weights = card.config.get('weights')
    if weights is None:
        return
    file = card.path / weights['file']
    if not file.is_file():
        raise _fail(card.path, f"missing {weights['file']}, the weights its {CONFIG_FILE} lists")
    size = file.stat().st_size
    if 'bytes' in weights and size != weights['bytes']:
        raise _fail(file, f"{size} bytes, but {CONFIG_FILE} records {weights['bytes']}: the file is truncated or "
                          f'not the one exported; export it again')


def load_registry(root: Optional[Path] = None, check_files: bool = True) -> List[VariantCard]:
    """All variants under ``root`` (default: the shipped registry), sorted by name; each tagged folder is
    attached to its architecture's card (and defines the architecture where it has no card of its own).
    ``check_files``: each folder holds the files its card lists (:func:`check_folder_files`)."""
    root = registry_root() if root is None else Path(root)
    folders: Iterable[Path] = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(('_', '.')))
    cards = [load_card(folder) for folder in folders]
    for card in cards if check_files else ():
        check_folder_files(card)
    architectures = {card.name: card for card in cards if card.path.name == card.name}
    tagged: Dict[str, Dict[str, VariantCard]] = {}
    for card in cards:
        if card.path.name == card.name:
            continue
        base = architectures.setdefault(card.name, card)
        if card.genotype != base.genotype:
            raise _fail(card.path / CONFIG_FILE, f'genotype {card.genotype} differs from the genotype {base.genotype} '
                                                 f'of {card.name} in {base.path}')
        tagged.setdefault(card.name, {})[card.tag] = card
    return [dataclasses.replace(card, tagged=tagged.get(name, {})) for name, card in sorted(architectures.items())]


def code_cell(text: str) -> str:
    """``text`` as inline code in a markdown table cell, its pipes (a genotype's) escaped so the cell stays whole."""
    return '`' + text.replace('|', '\\|') + '`'


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    if isinstance(value, (list, tuple)):
        return ', '.join(_format_value(v) for v in value)
    if isinstance(value, str) and '|' in value:  # a genotype
        return code_cell(value)
    return str(value)


def _weights_lines(config: Mapping[str, Any]) -> List[str]:
    weights = config.get('weights')
    if not weights:
        return ['- Weights: none (architecture card)']
    lines = [f"- Weights: `{weights['file']}`, sha256 `{weights['sha256']}`"]
    hub_id = config['pretrained_cfg'].get('hf_hub_id')
    return lines + ([f'- Hub: [{hub_id}](https://huggingface.co/{hub_id})'] if hub_id else [])


def _provenance_lines(provenance: Mapping[str, Any]) -> List[str]:
    """A table of the scalar fields, a JSON block per object field, then the command."""
    lines = ['## Provenance', '', '| field | value |', '|---|---|']
    lines += [f'| {key} | {_format_value(value)} |' for key, value in provenance.items()
              if key != 'command' and not isinstance(value, dict)]
    for key, value in provenance.items():
        if isinstance(value, dict):
            lines += ['', f'### {key}', '', '```json', json.dumps(value, indent=2), '```']
    if 'command' in provenance:
        lines += ['', 'Regenerate with:', '', '```bash', provenance['command'], '```']
    return lines + ['']


def check_tag(tag: Any) -> None:
    """Raise ``ValueError`` unless ``tag`` can name pretrained weights (``ARCH.TAG``, a registry folder)."""
    if not isinstance(tag, str) or not tag or '.' in tag or '/' in tag:
        raise ValueError(f'tag must be a non-empty name without "." or "/", got {tag!r}')


def tagged_name(architecture: str, tag: str) -> str:
    """The timm model name of a pretrained tag: ``ARCH.TAG``, or ``ARCH`` for the untagged card."""
    return f'{architecture}.{tag}' if tag else architecture


def _is_shipped(name: str) -> bool:
    """Whether the registry shipped with the package has the folder ``name`` (``ARCH`` or ``ARCH.TAG``;
    ``import asvit_zoo`` registers it with timm everywhere)."""
    return (registry_root() / name).is_dir()


def render_model_card(config: Mapping[str, Any], description: str) -> str:
    """The README.md of a registry folder: Hub YAML metadata, description, genotype, weights, provenance."""
    tag = config['pretrained_cfg'].get('tag', '')
    name = tagged_name(config['architecture'], tag)
    genotype = config['model_args']['genotype']
    lines = ['---', 'library_name: timm', f"license: {config['pretrained_cfg'].get('license', 'mit')}", 'tags:',
             '- image-classification', '- timm', '- asvit', '---', f'# {name}', '', description, '',
             f'- Genotype: `{genotype}`', f"- Classes: {config['num_classes']}, features: {config.get('num_features')}",
             *_weights_lines(config), '']
    if config.get('provenance'):
        lines += _provenance_lines(config['provenance'])
    use = [f"model = timm.create_model('{name}'{', pretrained=True' if config.get('weights') else ''})"]
    hub_id = config['pretrained_cfg'].get('hf_hub_id')
    if hub_id:
        use.append(f"model = timm.create_model('hf-hub:{hub_id}', pretrained=True)")
        if not _is_shipped(name):  # timm knows the tag only once the repo's folder is registered
            use[:0] = ['from huggingface_hub import snapshot_download', '',
                       f"asvit_zoo.register_folder(snapshot_download('{hub_id}'))  # {config['architecture']} "
                       f'is not shipped with asvit-zoo']
    lines += ['## Use', '', '```python', 'import asvit_zoo, timm', *use, '```', '',
              '## Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)


def write_card(root: Path, name: str, genotype: Genotype, description: str,
               provenance: Optional[Mapping[str, Any]] = None, num_classes: int = 1000) -> VariantCard:
    """Write ``root/name/`` (config.json and README.md) whole, once its card validates; return the card."""
    if genotype.is_seed:
        raise ValueError(f'variant {name}: a card needs a scaled genotype, got the seed {genotype}')
    config: Dict[str, Any] = {
        'architecture': name, 'num_classes': num_classes, 'num_features': genotype.stage_widths()[-1],
        'global_pool': 'avg', 'model_args': {'genotype': str(genotype)}, 'pretrained_cfg': dict(DEFAULT_PRETRAINED_CFG),
    }
    if provenance:
        config['provenance'] = dict(provenance)
    return write_variant_folder(Path(root) / name, config, description)


def write_variant_folder(target: Path, config: Mapping[str, Any], description: str,
                         files: Optional[Mapping[str, bytes]] = None) -> VariantCard:
    """Write the variant folder ``target`` whole: ``files`` (name -> bytes: the weights), config.json and the
    model card. The card is validated before anything is written, so errors name ``target``, not its staging copy;
    an earlier folder is replaced only once all is written. Returns the card as read back."""
    card_from_config(config, target)
    with atomic_folder(target) as folder:
        for name, data in (files or {}).items():
            atomic_write(folder / name, lambda f: f.write(data))
        write_json(folder / CONFIG_FILE, config)
        write_text(folder / CARD_FILE, render_model_card(config, description))
    return load_card(target)
