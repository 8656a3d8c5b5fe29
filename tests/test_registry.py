"""Registry cards: format validation with clear errors, and registration of every card with timm."""
import json
import shutil
from pathlib import Path

import pytest
import timm

from asvit_zoo.registry import RegistryError, load_card, load_registry, registry_root, write_card

REPO_REGISTRY = Path(__file__).resolve().parents[1] / 'registry'


def test_shipped_registry_is_the_repo_folder_and_every_card_registers():
    cards = load_registry()
    names = {card.name for card in cards}
    assert names == {p.name.split('.')[0] for p in REPO_REGISTRY.iterdir() if (p / 'config.json').is_file()}
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


@pytest.mark.parametrize('name', ['resnet18', 'asvit'])
def test_a_folder_cannot_take_the_name_of_another_timm_model(card_dir, name):
    import asvit_zoo

    entrypoint = timm.models.model_entrypoint(name)
    _edit(card_dir, architecture=name)
    with pytest.raises(RegistryError, match=f"architecture '{name}' is the name of a timm model that is not an "
                                            f'As-ViT variant; registering it would replace that model'):
        asvit_zoo.register_folder(card_dir)  # as a local-dir: or hf-hub: source would
    assert timm.models.model_entrypoint(name) is entrypoint


def test_valid_copy_loads(card_dir):
    card = load_card(card_dir)
    assert card.name == 'asvit_seed' and str(card.genotype) == '8,2,3,1|4,1,2,1|4,1,4,1|4,1,6,1|32,32'


@pytest.mark.parametrize('changes, message', [
    (dict(model_args=None), r"missing required field\(s\) \['model_args'\]"),
    (dict(architecture=None), r"missing required field\(s\) \['architecture'\]"),
    (dict(weights_url='x'), r"unknown field\(s\) \['weights_url'\]"),
    (dict(architecture='asvit_small'), "architecture 'asvit_small' does not match its folder name 'asvit_seed'"),
    (dict(architecture='bad-name'), r"architecture must be a model name \(a letter, then letters, digits or \"_\"\), "
                                    r"got 'bad-name'"),
    (dict(model_args={'genotype': '8,2,3|4,1,2|4,1,4|4,1,6|99'}),
     r'model_args.genotype does not parse: H \(heads of stage 4\) must be a positive multiple of 8.*got 99'),
    (dict(model_args={'genotype': '8,2,3|4,1,2|4,1,4|4,1,6|32'}), 'must be in the scaled form'),
    (dict(model_args={'genotype': '8,2,3,1|4,1,2,1|4,1,4,1|4,1,6,1|32,32', 'depth': 3}),
     r"unknown model_args field\(s\) \['depth'\]"),
    (dict(num_features=512), "num_features 512 does not match the genotype's last stage width 256"),
    (dict(num_classes=-1), 'num_classes must be an integer >= 0'),
    (dict(pretrained_cfg=[1]), 'pretrained_cfg must be an object'),
    (dict(num_classes=True), 'num_classes must be an integer >= 0, got True'),
    (dict(pretrained_cfg={'foo': 1}), r"unknown pretrained_cfg field\(s\) \['foo'\]; allowed: timm's PretrainedCfg"),
    (dict(pretrained_cfg={'tag': 5}), 'pretrained_cfg.tag must be a string, got 5'),
    (dict(pretrained_cfg={'input_size': [1, 28]}), r'pretrained_cfg.input_size must be \[C, H, W\], three integers '
                                                   r'>= 1, got \[1, 28\]'),
    (dict(pretrained_cfg={'input_size': [1, 28, 28], 'mean': [0.5, 0.5, 0.5]}),
     r'pretrained_cfg.mean must list one number per input channel \(1, from input_size \[1, 28, 28\]\), got'),
    (dict(pretrained_cfg={'input_size': [1, 28, 28], 'mean': [0.5]}),
     r'pretrained_cfg.std is required for input_size \[1, 28, 28\]: the default \[0.229, 0.224, 0.225\] is for 3 '
     r'channels'),
    (dict(global_pool='max'), "global_pool must be 'avg' .*, got 'max'"),
    (dict(label_names='Trouser'), r'label_names must list one string per class \(num_classes 1000\), got '
                                  r"'Trouser'"),
    (dict(label_names=['a', 'b']), r'label_names must list one string per class \(num_classes 1000\)'),
    (dict(label_descriptions=['a']), r'label_descriptions must be an object of strings'),
    (dict(provenance=['x']), r"provenance must be an object, got \['x'\]"),
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
    (card_dir / 'config.json').write_bytes(b'{"architecture": "asvit_\xff"}')
    with pytest.raises(RegistryError, match="config.json: not valid JSON: 'utf-8' codec can't decode byte 0xff"):
        load_card(card_dir)
    (card_dir / 'config.json').unlink()
    with pytest.raises(RegistryError, match='missing config.json'):
        load_card(card_dir)


def test_write_card_refuses_an_invalid_card_before_writing(tmp_path):
    genotype = load_card(REPO_REGISTRY / 'asvit_seed').genotype
    with pytest.raises(RegistryError) as info:
        write_card(tmp_path, 'Bad Name', genotype, 'A card with a name that is not a model name.')
    assert str(info.value).startswith(f"{tmp_path / 'Bad Name' / 'config.json'}: architecture must be a model name")
    assert list(tmp_path.iterdir()) == []  # no folder, no staging copy
    card = write_card(tmp_path, 'asvit_good', genotype, 'A valid card.')
    assert card.path == tmp_path / 'asvit_good' and card.genotype == genotype


# --------------------------------------------------------------------------- tagged folders (weights)
SHA = '0' * 64


@pytest.fixture
def tagged_dir(card_dir: Path) -> Path:
    """asvit_seed.fmnist: a tagged folder with weights of asvit_seed, beside the asvit_seed card."""
    folder = card_dir.parent / 'asvit_seed.fmnist'
    shutil.copytree(card_dir, folder)
    config = json.loads((folder / 'config.json').read_text())
    config['pretrained_cfg'].update(tag='fmnist', hf_hub_id='org/asvit_seed-fmnist')
    config.update(num_classes=10, weights={'file': 'model.safetensors', 'sha256': SHA})
    (folder / 'config.json').write_text(json.dumps(config))
    (folder / 'model.safetensors').write_bytes(b'not read by the registry')
    return folder


def test_tagged_folder_adds_a_tag_to_its_architecture(tagged_dir):
    card, = load_registry(tagged_dir.parent)
    assert card.name == 'asvit_seed' and card.path.name == 'asvit_seed' and card.tags() == ['', 'fmnist']
    assert card.weights_file('') is None and card.weights_sha256('fmnist') == SHA
    cfg = card.pretrained_cfg('fmnist')
    assert cfg['file'] == str(tagged_dir / 'model.safetensors') and cfg['hf_hub_id'] == 'org/asvit_seed-fmnist'
    assert cfg['num_classes'] == 10 and card.pretrained_cfg('')['num_classes'] == 1000
    with pytest.raises(KeyError, match=r"asvit_seed has no pretrained tag 'x'; tags: \['', 'fmnist'\]"):
        card.pretrained_cfg('x')


def test_staging_and_cache_folders_are_not_variants(tagged_dir):
    """What a killed export leaves (a hidden staging folder, half written) and __pycache__ are not read as cards."""
    (tagged_dir.parent / '.asvit_seed.fmnist.x1y2.tmp').mkdir()
    (tagged_dir.parent / '__pycache__').mkdir()
    card, = load_registry(tagged_dir.parent)
    assert card.name == 'asvit_seed' and card.tags() == ['', 'fmnist']


def test_tagged_folder_defines_an_unknown_architecture(tagged_dir, card_dir):
    shutil.rmtree(card_dir)
    card, = load_registry(tagged_dir.parent)
    assert card.name == 'asvit_seed' and card.path == tagged_dir and card.tags() == ['fmnist']


def test_tagged_folder_with_another_genotype(tagged_dir):
    _edit(tagged_dir, model_args={'genotype': '8,2,3,1|4,1,2,1|4,1,4,1|4,1,6,1|32,64'}, num_features=None)
    with pytest.raises(RegistryError, match=r'asvit_seed.fmnist/config.json: genotype 8,2,3,1\|.*\|32,64 differs '
                                            r'from the genotype .*\|32,32 of asvit_seed'):
        load_registry(tagged_dir.parent)


@pytest.mark.parametrize('changes, message', [
    (dict(pretrained_cfg={'tag': 'other'}), "architecture 'asvit_seed' does not match its folder name "
                                            "'asvit_seed.fmnist': expected the folder 'asvit_seed' or "
                                            "'asvit_seed.other'"),
    (dict(pretrained_cfg={'tag': 'fmnist', 'hf_hub_id': 'no-slash'}), 'hf_hub_id must be a Hub repo id ORG/NAME'),
    (dict(weights={'file': 'model.safetensors'}), 'weights must be an object with "file" and "sha256"'),
    (dict(weights={'file': 'model.safetensors', 'sha256': SHA, 'url': 'x'}), r"unknown weights field\(s\) \['url'\]"),
    (dict(weights={'file': '../model.safetensors', 'sha256': SHA}), 'weights.file must be a .safetensors file name'),
    (dict(weights={'file': 'model.bin', 'sha256': SHA}), 'weights.file must be a .safetensors file name'),
    (dict(weights={'file': 'model.safetensors', 'sha256': 'ABC'}), 'weights.sha256 must be 64 lowercase hex digits'),
    (dict(weights={'file': 'model.safetensors', 'sha256': SHA, 'bytes': -5}),
     "weights.bytes must be the file's size, an integer >= 1, got -5"),
])
def test_tagged_validation_errors(tagged_dir, changes, message):
    _edit(tagged_dir, **changes)
    with pytest.raises(RegistryError, match=message) as info:
        load_card(tagged_dir)
    assert str(tagged_dir / 'config.json') in str(info.value)


@pytest.mark.parametrize('damage, message', [
    (lambda folder: (folder / 'README.md').unlink(), r'asvit_seed.fmnist: missing README.md \(every variant folder '
                                                     r'needs its model card\)'),
    (lambda folder: (folder / 'model.safetensors').unlink(), r'asvit_seed.fmnist: missing model.safetensors, the '
                                                            r'weights its config.json lists'),
    (lambda folder: _edit(folder, weights={'file': 'model.safetensors', 'sha256': SHA, 'bytes': 1000}),
     r'asvit_seed.fmnist/model.safetensors: 24 bytes, but config.json records 1000: the file is truncated'),
])
def test_a_registry_folder_must_hold_the_files_its_card_lists(tagged_dir, damage, message):
    load_registry(tagged_dir.parent)
    damage(tagged_dir)
    with pytest.raises(RegistryError, match=message):
        load_registry(tagged_dir.parent)
