"""Registry cards: format validation with clear errors, and registration of every card with timm."""
import json
import shutil
from pathlib import Path

import pytest
import timm

from asvit_zoo.registry import RegistryError, load_card, load_registry, registry_root

REPO_REGISTRY = Path(__file__).resolve().parents[1] / 'registry'


def test_shipped_registry_is_the_repo_folder_and_every_card_registers():
    cards = load_registry()
    names = {card.name for card in cards}
    assert names == {p.name for p in REPO_REGISTRY.iterdir() if (p / 'config.json').is_file()}
    assert {'asvit_large_paper', 'asvit_seed'} <= names
    assert names <= set(timm.list_models('asvit_*'))
    for card in cards:
        assert (card.path / 'README.md').read_text().startswith('---\n')
        model = timm.create_model(card.name)
        assert model.genotype == card.genotype
        assert model.num_features == card.config['num_features']
    assert registry_root().samefile(REPO_REGISTRY)


@pytest.fixture
def card_dir(tmp_path: Path) -> Path:
    folder = tmp_path / 'asvit_seed'
    shutil.copytree(REPO_REGISTRY / 'asvit_seed', folder)
    return folder


def _edit(folder: Path, **changes) -> None:
    path = folder / 'config.json'
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_valid_copy_loads(card_dir):
    card = load_card(card_dir)
    assert card.name == 'asvit_seed' and str(card.genotype) == '8,2,3,1|4,1,2,1|4,1,4,1|4,1,6,1|32,32'


@pytest.mark.parametrize('changes, message', [
    (dict(model_args=None), r"missing required field\(s\) \['model_args'\]"),
    (dict(architecture=None), r"missing required field\(s\) \['architecture'\]"),
    (dict(weights_url='x'), r"unknown field\(s\) \['weights_url'\]"),
    (dict(architecture='asvit_small'), "architecture 'asvit_small' does not match its folder name 'asvit_seed'"),
    (dict(model_args={'genotype': '8,2,3|4,1,2|4,1,4|4,1,6|99'}), r'model_args.genotype does not parse: H \(heads of stage 4\) must be a positive multiple of 8.*got 99'),
    (dict(model_args={'genotype': '8,2,3|4,1,2|4,1,4|4,1,6|32'}), 'must be in the scaled form'),
    (dict(model_args={'genotype': '8,2,3,1|4,1,2,1|4,1,4,1|4,1,6,1|32,32', 'depth': 3}),
     r"unknown model_args field\(s\) \['depth'\]"),
    (dict(num_features=512), "num_features 512 does not match the genotype's last stage width 256"),
    (dict(num_classes=-1), 'num_classes must be an integer >= 0'),
    (dict(pretrained_cfg=[1]), 'pretrained_cfg must be an object'),
])
def test_validation_errors_name_file_and_problem(card_dir, changes, message):
    _edit(card_dir, **changes)
    with pytest.raises(RegistryError, match=message) as info:
        load_card(card_dir)
    assert str(card_dir / 'config.json') in str(info.value)


def test_missing_and_malformed_config(card_dir):
    (card_dir / 'config.json').write_text('{"architecture": ')
    with pytest.raises(RegistryError, match='not valid JSON'):
        load_card(card_dir)
    (card_dir / 'config.json').unlink()
    with pytest.raises(RegistryError, match='missing config.json'):
        load_card(card_dir)
