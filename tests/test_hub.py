"""Weights as Hub repos: export (safetensors + config.json + model card), bit-identical loading through timm
(registered tag, ``local-dir:``, ``hf-hub:`` from a real offline HF cache), integrity errors, push."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import asvit_zoo
from asvit_zoo.asvit import register_cards
from asvit_zoo.cli import main as cli_main
from asvit_zoo.datasets import FASHION_MNIST_CLASSES
from asvit_zoo.genotype import Genotype
from asvit_zoo.hub import HubUnavailableError, WeightsError, export_weights, push_folder, sha256_file
from asvit_zoo.registry import RegistryError, load_registry, write_card
from asvit_zoo.summary import _row
from asvit_zoo.train import Trainer, TrainConfig
from asvit_zoo.weights import load_weights

GENOTYPE = '4,2,2,1|2,1,2,1|2,1,2,1|2,1,2,1|16,8'
OTHER_GENOTYPE = '4,2,2,1|2,1,2,1|2,1,2,1|2,1,2,1|16,16'
HUB_ID = 'asvit-zoo/asvit_hubtest-fmnist'
MODEL_KWARGS = dict(num_classes=10, in_chans=1)


def _trained_state(genotype: str, steps: int = 3) -> Dict[str, torch.Tensor]:
    """A tiny As-ViT after a few SGD steps on random 28x28 grayscale images (real, non-initial weights)."""
    torch.manual_seed(0)
    model = timm.create_model('asvit', genotype=genotype, **MODEL_KWARGS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as the trainer writes it: last.pth.tar (with numpy RNG states) and metrics.jsonl."""
    import numpy as np
    import random

    folder = tmp_path_factory.mktemp('run')
    cfg = TrainConfig(genotype=GENOTYPE, img_size=28, epochs=2, retokenization='short').to_dict()
    torch.save({'epoch': 1, 'config': cfg, 'model': _trained_state(GENOTYPE), 'ema': None, 'schedule': 'short',
                'rng': [{'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}]},
               folder / 'last.pth.tar')
    (folder / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in (  # the card records the last epoch's
        {'epoch': 0, 'eval_top1': 40.5, 'eval_top5': 90.0}, {'epoch': 1, 'eval_top1': 71.25, 'eval_top5': 98.5})))
    return folder


@pytest.fixture(scope='module')
def registry(tmp_path_factory: pytest.TempPathFactory, run_dir: Path) -> Path:
    """A registry with the architecture card asvit_hubtest and its export asvit_hubtest.fmnist, registered."""
    root = tmp_path_factory.mktemp('registry')
    write_card(root, 'asvit_hubtest', Genotype.parse(GENOTYPE), 'Test architecture.')
    export_weights(run_dir / 'last.pth.tar', 'asvit_hubtest', 'fmnist', root=root, hf_hub_id=HUB_ID)
    register_cards(load_registry(root))
    return root


@pytest.fixture
def export_dir(registry: Path) -> Path:
    return registry / 'asvit_hubtest.fmnist'


def _copy(export_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_dir, tmp_path / export_dir.name))


def _assert_same_weights(model: torch.nn.Module, weights: Path) -> None:
    expected = load_file(str(weights))
    state = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


# --------------------------------------------------------------------------- export
def test_export_writes_a_hub_repo(export_dir: Path, run_dir: Path):
    assert sorted(p.name for p in export_dir.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((export_dir / 'config.json').read_text())
    assert config['architecture'] == 'asvit_hubtest' and config['num_classes'] == 10
    cfg = config['pretrained_cfg']
    assert cfg['tag'] == 'fmnist' and cfg['hf_hub_id'] == HUB_ID and cfg['input_size'] == [1, 28, 28]
    assert cfg['mean'] == [0.286] and cfg['std'] == [0.353] and cfg['license'] == 'mit'
    assert config['label_names'] == list(FASHION_MNIST_CLASSES)
    assert config['weights']['sha256'] == sha256_file(export_dir / 'model.safetensors')
    assert config['provenance']['eval_top1'] == 71.25 and config['provenance']['retokenization'] == 'short'
    with safe_open(str(export_dir / 'model.safetensors'), framework='pt') as f:
        assert f.metadata() == {'format': 'pt', 'genotype': GENOTYPE, 'architecture': 'asvit_hubtest',
                                'asvit_zoo_version': asvit_zoo.__version__}
    readme = (export_dir / 'README.md').read_text()
    for text in ('# asvit_hubtest.fmnist', '| eval_top1 | 71.25 |', '| retokenization | short |', '### recipe',
                 '"lr": 0.001', f"asvit export {run_dir / 'last.pth.tar'} --variant asvit_hubtest --tag fmnist",
                 'fashion-mnist', 'license: mit', '@inproceedings{chen2022auto', f"'hf-hub:{HUB_ID}'",
                 config['weights']['sha256']):
        assert text in readme


def test_export_rejects_weights_of_another_genotype(registry: Path, tmp_path: Path):
    path = tmp_path / 'other.pth'
    torch.save(_trained_state(OTHER_GENOTYPE, steps=0), path)
    with pytest.raises(ValueError, match=rf'weights do not fit genotype {re.escape(GENOTYPE)}: '
                                         r'\d+ tensors of another shape \(first: \S+ \(checkpoint \(\d+'):
        export_weights(path, 'asvit_hubtest', 'other', root=registry)
    assert not (registry / 'asvit_hubtest.other').exists()


def test_cli_export(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert cli_main(['export', str(run_dir / 'last.pth.tar'), '--variant', 'asvit_newarch', '--tag', 'fmnist',
                     '--registry', str(tmp_path)]) == 0
    assert 'asvit_newarch.fmnist ->' in capsys.readouterr().out
    card, = load_registry(tmp_path)  # a tagged folder of an unknown architecture defines it
    assert card.name == 'asvit_newarch' and card.tags() == ['fmnist'] and str(card.genotype) == GENOTYPE


def test_cli_export_records_a_command_that_regenerates_it(run_dir: Path, tmp_path: Path):
    import shlex

    assert cli_main(['export', str(run_dir / 'last.pth.tar'), '--variant', 'asvit_regen', '--tag', 'fmnist',
                     '--registry', str(tmp_path / 'a')]) == 0  # the genotype comes from the trainer's config
    config = json.loads((tmp_path / 'a' / 'asvit_regen.fmnist' / 'config.json').read_text())
    command = shlex.split(config['provenance']['command'])
    assert command[command.index('--genotype') + 1] == GENOTYPE
    (tmp_path / 'a' / 'asvit_regen.fmnist').rename(tmp_path / 'first')
    assert cli_main(command[1:]) == 0
    assert (tmp_path / 'a' / 'asvit_regen.fmnist' / 'model.safetensors').read_bytes() == \
        (tmp_path / 'first' / 'model.safetensors').read_bytes()


def test_export_keeps_the_genotype_of_a_variant(export_dir: Path, registry: Path, tmp_path: Path):
    weights = export_dir / 'model.safetensors'
    with pytest.raises(ValueError, match=f'asvit_hubtest has genotype {re.escape(GENOTYPE)} .*; genotype '
                                         f'{re.escape(OTHER_GENOTYPE)} differs'):
        export_weights(weights, 'asvit_hubtest', 'other', root=tmp_path, genotype=OTHER_GENOTYPE)
    with pytest.raises(WeightsError, match=f'weights of another variant: expected genotype {re.escape(OTHER_GENOTYPE)}'
                                           f', found genotype {re.escape(GENOTYPE)}'):
        export_weights(weights, 'asvit_renamed', 'other', root=tmp_path, genotype=OTHER_GENOTYPE)
    assert not any(tmp_path.iterdir())


def test_reexport_keeps_what_the_card_records(export_dir: Path, tmp_path: Path):
    """An exported model.safetensors exported again (another name, tag and Hub id) keeps the genotype of its
    metadata and, from the card beside it, the input size, normalisation, labels and provenance."""
    first = json.loads((export_dir / 'config.json').read_text())
    card = export_weights(export_dir / 'model.safetensors', 'asvit_renamed', 'mine', root=tmp_path / 'reg',
                          hf_hub_id='org/renamed')
    config = json.loads((card.path / 'config.json').read_text())
    assert str(card.genotype) == GENOTYPE and config['num_classes'] == 10
    assert config['pretrained_cfg'] == {**first['pretrained_cfg'], 'tag': 'mine', 'hf_hub_id': 'org/renamed'}
    assert config['label_names'] == first['label_names']
    kept = ('epoch', 'data', 'retokenization', 'eval_top1', 'eval_top5', 'recipe')
    assert {k: config['provenance'][k] for k in kept} == {k: first['provenance'][k] for k in kept}
    assert config['provenance']['checkpoint'] == str(export_dir / 'model.safetensors')
    before, after = load_file(export_dir / 'model.safetensors'), load_file(card.path / 'model.safetensors')
    assert before.keys() == after.keys() and all(torch.equal(v, before[k]) for k, v in after.items())

    alone = tmp_path / 'alone' / 'weights.safetensors'  # without its card: the metadata's genotype, default cfg
    alone.parent.mkdir()
    shutil.copy(export_dir / 'model.safetensors', alone)
    card = export_weights(alone, 'asvit_alone', 'x', root=tmp_path / 'reg')
    config = json.loads((card.path / 'config.json').read_text())
    assert str(card.genotype) == GENOTYPE and config['pretrained_cfg']['input_size'] == [1, 224, 224]
    assert config['pretrained_cfg']['crop_pct'] == 0.9  # timm's default evaluation crop at 224 px
    assert 'recipe' not in config['provenance'] and 'label_names' not in config


def test_synthetic_runs_export_the_normalisation_the_trainer_applied(tmp_path: Path):
    """The exported mean and std turn the images into exactly the inputs the trainer fed the model."""
    cfg = TrainConfig(genotype=GENOTYPE, data='synthetic', img_size=28, synthetic_train=32, synthetic_eval=8,
                      batch_size=32, epochs=1, device='cpu')
    trainer = Trainer(cfg, tmp_path / 'run', progress=False)
    trainer.run()
    card = export_weights(tmp_path / 'run' / 'last.pth.tar', 'asvit_synthetic', 'probe', root=tmp_path / 'reg')
    pretrained_cfg = json.loads((card.path / 'config.json').read_text())['pretrained_cfg']
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    mean, std = (torch.tensor(pretrained_cfg[k]).view(1, -1, 1, 1) for k in ('mean', 'std'))
    assert torch.allclose(trainer.data.prepare(images, False), (images / 255 - mean) / std, atol=1e-6)


NEW_TAG_SCRIPT = '''
import json, sys, warnings
warnings.simplefilter('error')  # registering the new tag of a shipped variant must not warn
import timm, torch
from safetensors.torch import load_file
import asvit_zoo

tiny = timm.create_model('asvit_tiny')
mine = timm.create_model('asvit_tiny.mine', pretrained=True)
shipped = timm.create_model('asvit_tiny.fmnist', pretrained=True)
expected = load_file(sys.argv[1])
from asvit_zoo.asvit import registered_folder
from asvit_zoo.summary import list_variants

row, = [r for r in list_variants() if r.name == 'asvit_tiny']
print(json.dumps({'default_classes': tiny.num_classes, 'tags': timm.list_pretrained('asvit_tiny*'),
                  'mine': all(torch.equal(v, expected[k]) for k, v in mine.state_dict().items()),
                  'shipped_classes': shipped.num_classes, 'folder': str(registered_folder('asvit_tiny.mine')),
                  'listed': row.weights}))
'''


def test_a_new_tag_of_a_shipped_variant_adds_to_its_tags(tmp_path: Path):
    shipped = load_registry()
    tiny = next(card for card in shipped if card.name == 'asvit_tiny')
    weights = tiny.weights_file('fmnist')
    card = export_weights(weights, 'asvit_tiny', 'mine', root=tmp_path / 'reg', hf_hub_id='me/tiny-mine')
    assert card.genotype == tiny.genotype  # from the registered card: no --genotype needed
    readme = (tmp_path / 'reg' / 'asvit_tiny.mine' / 'README.md').read_text()
    assert "asvit_zoo.register_folder(snapshot_download('me/tiny-mine'))" in readme  # the tag is not shipped
    env = dict(os.environ, ASVIT_ZOO_REGISTRY=str(tmp_path / 'reg'))
    result = subprocess.run([sys.executable, '-c', NEW_TAG_SCRIPT, str(weights)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out['default_classes'] == 1000 and out['shipped_classes'] == 10 and out['mine']
    assert {'asvit_tiny.fmnist', 'asvit_tiny.mine'} <= set(out['tags'])
    assert out['folder'] == str(tmp_path / 'reg' / 'asvit_tiny.mine') and 'mine' in out['listed']  # list, show, push


def test_cli_tables_list_another_registrys_grayscale_variant(run_dir: Path, tmp_path: Path):
    export_weights(run_dir / 'last.pth.tar', 'asvit_gray', 'fmnist', root=tmp_path)  # 1 channel, 10 classes
    env = dict(os.environ, ASVIT_ZOO_REGISTRY=str(tmp_path))
    for command in ('list', 'summary'):
        result = subprocess.run([sys.executable, '-m', 'asvit_zoo.cli', command, '--image-size', '28'], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert all(re.search(rf'^\| {name} +\|', result.stdout, re.M) for name in ('asvit_gray', 'asvit_tiny')), command


def test_another_registry_must_not_change_a_variants_genotype(tmp_path: Path):
    write_card(tmp_path, 'asvit_tiny', Genotype.parse(GENOTYPE), 'Not the shipped asvit_tiny.')
    with pytest.raises(RegistryError, match=f'asvit_tiny has genotype {re.escape(GENOTYPE)}, but the registered '
                                            f'asvit_tiny .* has .*; another registry may add pretrained tags'):
        register_cards(load_registry(tmp_path))
    assert str(timm.create_model('asvit_tiny').genotype) != GENOTYPE


@pytest.mark.parametrize('kwargs,message', [
    (dict(variant='../evil'), "variant must be a model name .* got '../evil'"),
    (dict(variant='asvit_a.b'), "variant must be a model name .* got 'asvit_a.b'"),
    (dict(tag='a/b'), "tag must be a non-empty name without .* got 'a/b'"),
    (dict(hf_hub_id='bad id'), "hf_hub_id must be a Hub repo id ORG/NAME, got 'bad id'"),
    (dict(variant='resnet50'), "architecture 'resnet50' is the name of a timm model that is not an As-ViT variant"),
])
def test_export_checks_names_before_writing(run_dir: Path, tmp_path: Path, kwargs: dict, message: str):
    args = {'variant': 'asvit_newarch', 'tag': 'fmnist', **kwargs}
    with pytest.raises(ValueError, match=message):
        export_weights(run_dir / 'last.pth.tar', args.pop('variant'), args.pop('tag'), root=tmp_path / 'reg', **args)
    assert not (tmp_path / 'reg').exists() or not any((tmp_path / 'reg').iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ['reg'])  # nothing outside the registry either


def test_export_refuses_what_it_cannot_do(export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    weights = export_dir / 'model.safetensors'
    with pytest.raises(ValueError, match=f'^{weights}: ema needs a trainer checkpoint'):
        export_weights(weights, 'asvit_other', 'x', root=tmp_path, ema=True)
    (tmp_path / 'file').write_text('not a folder')
    for registry, message in ((str(tmp_path / 'file'), f"registry {tmp_path / 'file'}: {tmp_path / 'file'} exists "
                                                       f'and is not a folder'),
                              ('', "registry must be a path, got ''")):
        assert cli_main(['export', str(weights), '--variant', 'asvit_other', '--tag', 'x', '--registry', registry]) == 2
        assert capsys.readouterr().err == f'asvit export: error: {message}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


def test_failed_export_leaves_the_previous_folder(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import asvit_zoo.registry as registry

    folder = export_weights(run_dir / 'last.pth.tar', 'asvit_newarch', 'fmnist', root=tmp_path).path
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(config, text):  # the card is the last file written: fail after the weights and config.json
        raise RuntimeError('disk full')
    monkeypatch.setattr(registry, 'render_model_card', fail)
    with pytest.raises(RuntimeError, match='disk full'):  # config.json would differ: it records the hub id
        export_weights(run_dir / 'last.pth.tar', 'asvit_newarch', 'fmnist', root=tmp_path, hf_hub_id='org/new')
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['asvit_newarch.fmnist']  # no staging folder left
    monkeypatch.undo()
    export_weights(run_dir / 'last.pth.tar', 'asvit_newarch', 'fmnist', root=tmp_path, hf_hub_id='org/new')
    assert json.loads((folder / 'config.json').read_text())['pretrained_cfg']['hf_hub_id'] == 'org/new'
    assert "'hf-hub:org/new'" in (folder / 'README.md').read_text()


def test_export_again_repairs_a_damaged_folder(run_dir: Path, tmp_path: Path):
    folder = export_weights(run_dir / 'last.pth.tar', 'asvit_newarch', 'fmnist', root=tmp_path).path
    good = (folder / 'model.safetensors').read_bytes()
    (folder / 'model.safetensors').write_bytes(good[:1000])
    with pytest.raises(RegistryError, match='1000 bytes, but config.json records'):
        load_registry(tmp_path)
    export_weights(run_dir / 'last.pth.tar', 'asvit_newarch', 'other', root=tmp_path)  # another tag beside it
    export_weights(run_dir / 'last.pth.tar', 'asvit_newarch', 'fmnist', root=tmp_path)  # what the error asks for
    assert (folder / 'model.safetensors').read_bytes() == good
    assert load_registry(tmp_path)[0].tags() == ['fmnist', 'other']


def test_export_records_the_recipes_evaluation_transform(tmp_path: Path):
    """ImageFolder runs are evaluated with the recipe's crop_pct and interpolation: the exported cfg says so."""
    cfg = TrainConfig(genotype=GENOTYPE, data=str(tmp_path / 'images'), img_size=32, crop_pct=0.5,
                      interpolation='nearest').to_dict()
    rgb = timm.create_model('asvit', genotype=GENOTYPE, num_classes=10).state_dict()  # ImageFolder images are RGB
    torch.save({'epoch': 0, 'config': cfg, 'model': rgb}, tmp_path / 'last.pth.tar')
    card = export_weights(tmp_path / 'last.pth.tar', 'asvit_newarch', 'imgf', root=tmp_path / 'reg')
    pretrained_cfg = card.config['pretrained_cfg']
    assert (pretrained_cfg['crop_pct'], pretrained_cfg['interpolation']) == (0.5, 'nearest')
    assert pretrained_cfg['input_size'] == [3, 32, 32] and pretrained_cfg['mean'] == [0.485, 0.456, 0.406]


def test_corrupt_checkpoints_are_named(run_dir: Path, tmp_path: Path):
    path = tmp_path / 'last.pth.tar'
    path.write_bytes((run_dir / 'last.pth.tar').read_bytes()[:1000])
    with pytest.raises(WeightsError, match=f'{path}: not a readable torch checkpoint'):
        export_weights(path, 'asvit_newarch', 'fmnist', root=tmp_path / 'reg')
    with pytest.raises(WeightsError, match=f'{path}: not a readable torch checkpoint'):
        load_weights(path)
    path.write_bytes(b'\x80\x028' + b'x' * 50)  # a pickle opcode torch's weights-only unpickler refuses
    with pytest.raises(WeightsError) as info:
        load_weights(path)
    assert str(info.value).endswith('UnpicklingError: Unsupported operand 56') and '\n' not in str(info.value)
    weights = tmp_path / 'w.safetensors'
    save_file(_trained_state(GENOTYPE, steps=0), str(weights))
    _truncate(weights)
    with pytest.raises(WeightsError, match=f'{weights}: not a readable safetensors file'):
        export_weights(weights, 'asvit_newarch', 'fmnist', root=tmp_path / 'reg', genotype=GENOTYPE)
    with pytest.raises(WeightsError, match=f'{weights}: not a readable safetensors file'):
        load_weights(weights)


# --------------------------------------------------------------------------- loading
def test_registered_tag_loads_bit_identical_weights(registry: Path, export_dir: Path):
    card = {c.name: c for c in load_registry(registry)}['asvit_hubtest']
    assert card.tags() == ['', 'fmnist']
    cfg = timm.get_pretrained_cfg('asvit_hubtest.fmnist')
    assert cfg.file == str(export_dir / 'model.safetensors') and cfg.hf_hub_id == HUB_ID
    model = timm.create_model('asvit_hubtest.fmnist', pretrained=True)
    assert (model.num_classes, model.in_chans) == (10, 1)
    assert model.pretrained_cfg['label_names'] == FASHION_MNIST_CLASSES
    _assert_same_weights(model, export_dir / 'model.safetensors')
    assert timm.create_model('asvit_hubtest').num_classes == 1000  # the architecture card stays the default
    with torch.device('meta'):
        row = _row(card, timm.create_model('asvit_hubtest'), 28)
    assert (row.weights, row.hub_id) == ('yes (fmnist)', HUB_ID)


def test_local_dir_loads_bit_identical_weights(export_dir: Path):
    model = timm.create_model(f'local-dir:{export_dir}', pretrained=True)
    _assert_same_weights(model, export_dir / 'model.safetensors')


OFFLINE_SCRIPT = '''
import json, sys, time
from pathlib import Path
import timm, torch
from safetensors.torch import load_file
from asvit_zoo.asvit import register_cards
from asvit_zoo.hub import HubUnavailableError
from asvit_zoo.registry import load_registry

registry, hub_only, weights, hub_id, genotype = sys.argv[1:]
register_cards(load_registry(Path(registry)) + load_registry(Path(hub_only)))
expected = load_file(weights)

def same(model):
    state = model.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)

out = {
    'hf_hub_name': same(timm.create_model('hf-hub:' + hub_id, pretrained=True)),
    'registered_hub_id': same(timm.create_model('asvit_hubonly.fmnist', pretrained=True)),
    'overlay_hub_id': same(timm.create_model('asvit', genotype=genotype, num_classes=10, in_chans=1, pretrained=True,
                                             pretrained_cfg_overlay=dict(hf_hub_id=hub_id))),
}
start = time.perf_counter()
try:
    timm.create_model('asvit', genotype=genotype, num_classes=10, in_chans=1, pretrained=True,
                      pretrained_cfg_overlay=dict(hf_hub_id='asvit-zoo/not-cached'))
except HubUnavailableError as e:
    out['missing'] = str(e)
out['missing_seconds'] = time.perf_counter() - start
print(json.dumps(out))
'''


def test_offline_hf_cache(export_dir: Path, tmp_path: Path, hf_cache):
    cache = hf_cache(tmp_path / 'hub', HUB_ID, export_dir)
    hub_only = tmp_path / 'hub_only' / 'asvit_hubonly.fmnist'  # a registered tag with an hf_hub_id and no file
    hub_only.mkdir(parents=True)
    config = json.loads((export_dir / 'config.json').read_text())
    del config['weights']
    (hub_only / 'config.json').write_text(json.dumps(dict(config, architecture='asvit_hubonly')))
    (hub_only / 'README.md').write_text('# asvit_hubonly.fmnist\n')
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf_home'), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='1')
    env.pop('HF_TOKEN', None)
    result = subprocess.run([sys.executable, '-c', OFFLINE_SCRIPT, str(export_dir.parent), str(hub_only.parent),
                             str(export_dir / 'model.safetensors'), HUB_ID, GENOTYPE],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out['hf_hub_name'] and out['registered_hub_id'] and out['overlay_hub_id']
    for text in ('hf-hub:asvit-zoo/not-cached: model.safetensors is not in the Hugging Face cache', str(cache),
                 'HF_HUB_OFFLINE=1 is set', 'hf download asvit-zoo/not-cached', 'local-dir:PATH'):
        assert text in out['missing']
    assert out['missing_seconds'] < 5


def test_model_card_snippet_runs_in_a_fresh_process(export_dir: Path, tmp_path: Path, hf_cache):
    """The card's Use block, run as written where only the Hub (here: an offline cache) has the variant."""
    readme = (export_dir / 'README.md').read_text()
    snippet = readme.split('## Use\n\n```python\n')[1].split('```')[0]
    assert "asvit_zoo.register_folder(snapshot_download('asvit-zoo/asvit_hubtest-fmnist'))" in snippet
    cache = hf_cache(tmp_path / 'hub', HUB_ID, export_dir)
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf_home'), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='1')
    env.pop('ASVIT_ZOO_REGISTRY', None)
    check = "\nprint(type(model).__name__, model.num_classes, model.pretrained_cfg['hf_hub_id'])"
    result = subprocess.run([sys.executable, '-c', snippet + check], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['AsViT', '10', HUB_ID]
    shipped = (asvit_zoo.registry.registry_root() / 'asvit_tiny.fmnist' / 'README.md').read_text()
    assert 'register_folder' not in shipped  # import asvit_zoo registers a shipped architecture everywhere


# --------------------------------------------------------------------------- integrity
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage', [_truncate, _flip_byte], ids=['truncated', 'corrupt'])
def test_local_dir_sha256_mismatch(export_dir: Path, tmp_path: Path, damage):
    folder = _copy(export_dir, tmp_path)
    expected = json.loads((folder / 'config.json').read_text())['weights']['sha256']
    damage(folder / 'model.safetensors')
    found = sha256_file(folder / 'model.safetensors')
    with pytest.raises(WeightsError, match='sha256 mismatch') as info:
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert all(text in str(info.value) for text in (str(folder / 'model.safetensors'), expected, found))
    with pytest.raises(WeightsError, match='sha256 mismatch'):  # the mmdet Pretrained path checks it too
        load_weights(f'local-dir:{folder}')


@pytest.mark.parametrize('text,message', [('{"architecture": ', 'damaged, not valid JSON'),
                                          ('[1, 2]', 'expected a JSON object (a Hub-format config), found list')])
def test_local_dir_damaged_config_is_named(export_dir: Path, tmp_path: Path, text: str, message: str):
    folder = _copy(export_dir, tmp_path)
    (folder / 'config.json').write_text(text)
    with pytest.raises((ValueError, WeightsError), match=re.escape(f"{folder / 'config.json'}: {message}")):
        load_weights(f'local-dir:{folder}')


def test_damaged_file_in_the_hf_cache_says_how_to_download_it_anew(export_dir: Path, tmp_path: Path, hf_cache,
                                                                   monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants

    cache = hf_cache(tmp_path / 'hub', HUB_ID, export_dir)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    _truncate(next(cache.rglob('model.safetensors')).resolve())  # the blob the snapshot links to
    with pytest.raises(WeightsError, match='sha256 mismatch') as info:
        load_weights(f'hf-hub:{HUB_ID}')
    assert f'`hf download {HUB_ID} model.safetensors --force-download`' in str(info.value)


def test_local_dir_missing_file(export_dir: Path, tmp_path: Path):
    folder = _copy(export_dir, tmp_path)
    (folder / 'model.safetensors').unlink()
    with pytest.raises(WeightsError, match=f"{folder / 'model.safetensors'}: weights file not found"):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_corrupt_file_without_recorded_sha256(export_dir: Path, tmp_path: Path):
    path = tmp_path / 'model.safetensors'
    path.write_bytes((export_dir / 'model.safetensors').read_bytes()[:50])
    with pytest.raises(WeightsError, match=f'{path}: not a readable safetensors file'):
        timm.create_model('asvit', genotype=GENOTYPE, **MODEL_KWARGS, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))


def test_registered_weights_are_checked(run_dir: Path, tmp_path: Path):
    export_weights(run_dir / 'last.pth.tar', 'asvit_hubdamaged', 'fmnist', root=tmp_path)
    register_cards(load_registry(tmp_path))
    weights = tmp_path / 'asvit_hubdamaged.fmnist' / 'model.safetensors'
    _truncate(weights)
    with pytest.raises(WeightsError, match=f'{weights}: sha256 mismatch'):
        timm.create_model('asvit_hubdamaged.fmnist', pretrained=True)
    with pytest.raises(WeightsError, match=f'{weights}: sha256 mismatch'):  # the mmdet Pretrained path too
        load_weights('asvit_hubdamaged.fmnist')
    for untagged in (lambda: timm.create_model('asvit_hubdamaged', pretrained=True),  # its default tag's weights
                     lambda: load_weights('asvit_hubdamaged')):
        with pytest.raises(WeightsError, match=f'{weights}: sha256 mismatch'):
            untagged()


def test_a_trainer_checkpoint_loads_as_a_file(run_dir: Path, tmp_path: Path):
    """timm's own torch load (weights_only) refuses the numpy RNG states of the trainer's checkpoints."""
    checkpoint = run_dir / 'last.pth.tar'
    model = timm.create_model('asvit', genotype=GENOTYPE, **MODEL_KWARGS, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(checkpoint), input_size=(1, 28, 28)))
    expected = torch.load(checkpoint, weights_only=False)['model']
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    truncated = tmp_path / 'last.pth.tar'
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=f'{truncated}: not a readable torch checkpoint'):
        timm.create_model('asvit', genotype=GENOTYPE, **MODEL_KWARGS, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(truncated)))


def test_a_free_form_genotype_takes_the_backbone_of_weights_with_another_classifier(export_dir: Path, tmp_path: Path):
    """As for every timm model: pretrained weights with a classifier of another size load without it."""
    source = export_dir / 'model.safetensors'
    expected = load_file(source)
    wrapped = tmp_path / 'mmengine.pth'  # another trainer's checkpoint: the weights under 'state_dict'
    torch.save({'state_dict': expected, 'meta': {'epoch': 3}}, wrapped)
    for weights in (source, wrapped):
        for num_classes in (3, 0):
            model = timm.create_model('asvit', genotype=GENOTYPE, in_chans=1, num_classes=num_classes, pretrained=True,
                                      pretrained_cfg_overlay=dict(file=str(weights)))
            state = model.state_dict()
            assert model.num_classes == num_classes and model.pretrained_cfg['num_classes'] == 10
            assert all(torch.equal(state[k], v) for k, v in expected.items() if not k.startswith('head.fc.'))
            # the cfg records the file, not a second copy of the weights it loaded
            assert 'state_dict' not in model.pretrained_cfg and model.pretrained_cfg['file'] == str(weights)
    # an in-memory state dict, wrapped: its classifier is found under the wrapper, and loaded
    model = timm.create_model('asvit', genotype=GENOTYPE, in_chans=1, num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(state_dict={'model': expected}))
    assert torch.equal(model.head.fc.weight, expected['head.fc.weight'])
    with pytest.raises(WeightsError, match='size mismatch'):  # the cfg's own count is the caller's choice
        timm.create_model('asvit', genotype=GENOTYPE, in_chans=1, num_classes=3, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(source), num_classes=3))


def test_unparsable_genotype_metadata_names_the_file(tmp_path: Path):
    path = tmp_path / 'model.safetensors'
    save_file(_trained_state(GENOTYPE, steps=0), str(path), metadata={'genotype': 'garbage'})
    with pytest.raises(WeightsError, match=f"{path}: the genotype in its metadata does not parse: genotype 'garbage'"):
        timm.create_model('asvit', genotype=GENOTYPE, **MODEL_KWARGS, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))


def test_wrong_variant(export_dir: Path):
    with pytest.raises(WeightsError, match=f'weights of another variant: expected genotype {OTHER_GENOTYPE}, '
                                           f'found genotype {GENOTYPE} \\(architecture asvit_hubtest\\)'):
        timm.create_model('asvit', genotype=OTHER_GENOTYPE, **MODEL_KWARGS, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(export_dir / 'model.safetensors')))


def test_wrong_shapes(tmp_path: Path):
    path = tmp_path / 'plain.safetensors'  # no metadata: only the load can tell
    save_file(_trained_state(OTHER_GENOTYPE, steps=0), str(path))
    with pytest.raises(WeightsError) as info:
        timm.create_model('asvit', genotype=GENOTYPE, **MODEL_KWARGS, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path), input_size=(1, 28, 28)))
    message = str(info.value)
    for text in (f'{path}: does not fit asvit: expected genotype {GENOTYPE}', 'found genotype unknown (no metadata)',
                 "'head.fc.weight': (10, 128)", 'size mismatch'):
        assert text in message


# --------------------------------------------------------------------------- push
class _FakeApi:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(('upload_folder', kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"


def test_push(export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, 'HfApi', _FakeApi)
    _FakeApi.calls = []
    assert push_folder(export_dir, HUB_ID) == f'https://huggingface.co/{HUB_ID}/commit/0'
    (_, repo_id, create), (_, upload) = _FakeApi.calls
    assert repo_id == HUB_ID and create == dict(repo_type='model', private=False, exist_ok=True)
    assert upload['folder_path'] == export_dir and upload['allow_patterns'] == [
        'config.json', 'README.md', 'model.safetensors']
    assert cli_main(['push', export_dir.name, '--repo', HUB_ID, '--registry', str(export_dir.parent)]) == 0
    assert _FakeApi.calls[2:] == _FakeApi.calls[:2]
    assert cli_main(['push', export_dir.name, '--repo', HUB_ID]) == 0  # found among the registered variants
    assert _FakeApi.calls[4:] == _FakeApi.calls[:2]
    _FakeApi.calls = []
    with pytest.raises(ValueError, match=f"hf_hub_id is '{HUB_ID}', not 'org/other'"):
        push_folder(export_dir, 'org/other')
    for repo in ('bad repo', ''):
        with pytest.raises(ValueError, match=f'^repo must be a Hub repo id ORG/NAME, got {repo!r}$'):
            push_folder(export_dir, repo)
    folder = _copy(export_dir, tmp_path)
    _flip_byte(folder / 'model.safetensors')
    with pytest.raises(WeightsError, match='sha256 mismatch'):
        push_folder(folder, HUB_ID)
    assert _FakeApi.calls == []  # nothing uploaded


def test_push_without_network_says_so(export_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import socket

    import huggingface_hub.constants

    with socket.socket() as s:  # a local port that nothing listens on: the connection is refused
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', f'http://127.0.0.1:{port}')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    with pytest.raises(HubUnavailableError) as info:
        push_folder(export_dir, HUB_ID, token='hf_test')
    for text in (f'{export_dir.name}: cannot push to {HUB_ID}', f'the Hub (http://127.0.0.1:{port}) cannot be reached',
                 'no commit was made'):
        assert text in str(info.value)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(HubUnavailableError, match='cannot be reached .*offline'):
        push_folder(export_dir, HUB_ID, token='hf_test')


@pytest.mark.parametrize('error_code,source,message', [
    ('RepoNotFound', 'hf-hub:org/missing', "hf-hub:org/missing: no model repo 'org/missing' on the Hub"),
    ('RevisionNotFound', 'hf-hub:org/repo@v9', "hf-hub:org/repo@v9: the repo 'org/repo' has no revision 'v9'"),
    ('EntryNotFound', 'hf-hub:org/repo', "hf-hub:org/repo: the repo has no file 'model.safetensors'"),
])
def test_hub_answers_that_name_the_repo(error_code: str, source: str, message: str,
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A local server answers as the Hub does for a missing repo, revision or file (404 with X-Error-Code)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import huggingface_hub.constants

    class Hub(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.send_header('X-Error-Code', error_code)
            self.send_header('Content-Length', '0')
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(('127.0.0.1', 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f'http://127.0.0.1:{server.server_port}'
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(huggingface_hub.constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                        endpoint + '/{repo_id}/resolve/{revision}/{filename}')  # made from ENDPOINT at import
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'cache'))
    try:
        with pytest.raises(WeightsError, match=re.escape(message)):
            load_weights(source)
    finally:
        server.shutdown()
        server.server_close()


def test_exported_bytes_do_not_depend_on_header_order():
    """safetensors writes its header in hash-map order; the export sorts it, so equal weights hash equally."""
    from safetensors.torch import load, save

    from asvit_zoo.hub import canonical_safetensors

    tensors = {'b.weight': torch.randn(3, 5), 'a.bias': torch.arange(7), 'c': torch.ones(2, dtype=torch.float16)}
    data = save(tensors, {'genotype': GENOTYPE, 'format': 'pt'})
    size = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + size])
    shuffled = json.dumps(dict(reversed(list(header.items())))).encode()
    shuffled += b' ' * (-len(shuffled) % 8)
    other = len(shuffled).to_bytes(8, 'little') + shuffled + data[8 + size:]
    assert other != data
    assert canonical_safetensors(other) == canonical_safetensors(data)
    loaded = load(canonical_safetensors(data))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert int.from_bytes(canonical_safetensors(data)[:8], 'little') % 8 == 0  # aligned data, as safetensors writes
