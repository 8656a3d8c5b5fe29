"""``asvit eval``: pretrained weights scored on the real Fashion-MNIST test set, whichever way they are named
(trainer checkpoint, exported safetensors, ``local-dir:``, a registered tag), and the shipped weights reproduce
the accuracy their cards record."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asvit_zoo.cli import main as cli_main
from asvit_zoo.distributed import DistEnv
from asvit_zoo.evaluation import evaluate_pretrained, load_pretrained
from asvit_zoo.hub import export_weights
from asvit_zoo.registry import load_registry, registry_root
from asvit_zoo.train import TrainConfig, build_data, train

GENOTYPE = '4,2,2,1|2,1,2,1|2,1,2,1|2,1,2,1|16,8'
EVAL_IMAGES = 300
CARD_TOLERANCE = 0.2  # points of top-1/top-5 between `asvit eval` and the card


@pytest.fixture(scope='module')
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real epoch on 512 Fashion-MNIST training images, evaluated by the trainer on 300 test images."""
    output = tmp_path_factory.mktemp('run')
    cfg = TrainConfig(genotype=GENOTYPE, epochs=1, batch_size=64, train_subset=512, eval_subset=EVAL_IMAGES,
                      lr=3e-3, warmup_epochs=0, device='cpu')
    train(cfg, output, progress=False)
    return output


def _trainer_metrics(run: Path) -> dict:
    return json.loads((run / 'metrics.jsonl').read_text().splitlines()[-1])


def test_checkpoint_matches_the_trainers_evaluation(run: Path):
    result = evaluate_pretrained(str(run / 'last.pth.tar'), subset=EVAL_IMAGES)
    trainer = _trainer_metrics(run)
    assert result['images'] == EVAL_IMAGES
    assert result['top1'] == pytest.approx(trainer['eval_top1'], abs=1e-6)
    assert result['top5'] == pytest.approx(trainer['eval_top5'], abs=1e-6)
    assert result['loss'] == pytest.approx(trainer['eval_loss'], rel=1e-5)
    assert result['top1'] > 30  # one epoch learns something on real data (chance is 10%)


def test_exported_weights_score_the_same_every_way_they_are_named(run: Path, tmp_path: Path):
    card = export_weights(run / 'last.pth.tar', 'asvit_evaltest', 'fmnist', root=tmp_path, genotype=GENOTYPE)
    folder = card.path
    expected = evaluate_pretrained(str(run / 'last.pth.tar'), subset=EVAL_IMAGES)
    for name in (f'local-dir:{folder}', str(folder / 'model.safetensors')):
        result = evaluate_pretrained(name, subset=EVAL_IMAGES)
        assert (result['top1'], result['top5']) == (expected['top1'], expected['top5']), name
    assert tuple(load_pretrained(f'local-dir:{folder}').pretrained_cfg['input_size']) == (1, 28, 28)


def test_cli_prints_one_json_object(run: Path, capsys: pytest.CaptureFixture):
    assert cli_main(['eval', str(run / 'last.pth.tar'), '--subset', '100', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert {'top1', 'top5', 'images'} <= set(out) and out['images'] == 100
    assert 0 <= out['top1'] <= out['top5'] <= 100


def test_scores_at_a_coarse_token_grid(run: Path, capsys: pytest.CaptureFixture):
    checkpoint = str(run / 'last.pth.tar')
    full = evaluate_pretrained(checkpoint, subset=EVAL_IMAGES)
    coarse = evaluate_pretrained(checkpoint, subset=EVAL_IMAGES, tokenizer='8:2')
    assert (full['tokenizer'], coarse['tokenizer']) == ('4:1', '8:2')
    # the model's own forward pass at stride 8, dilation 2 on the same test images
    net = load_pretrained(checkpoint)
    net.set_tokenizer(8, 2)
    cfg = TrainConfig(eval_subset=EVAL_IMAGES, train_subset=8, batch_size=8, workers=0)
    data = build_data(cfg, DistEnv(), torch.device('cpu'))
    with torch.no_grad():
        losses = [F.cross_entropy(net(data.prepare(x, False)), y, reduction='sum') for x, y in data.eval_loader]
    assert coarse['loss'] == pytest.approx(float(sum(losses)) / EVAL_IMAGES, rel=1e-5)
    assert abs(coarse['loss'] - full['loss']) > 0.01  # a different grid, a different computation
    assert cli_main(['eval', checkpoint, '--subset', '10', '--tokenizer', '8:0']) == 2
    assert "got '8:0'" in capsys.readouterr().err


def test_errors_name_the_problem(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(ValueError, match='has 1000 classes and fashion-mnist has 10'):
        _score_imagenet_head_on_fmnist(tmp_path)
    lonely = tmp_path / 'lonely' / 'model.safetensors'
    lonely.parent.mkdir()
    lonely.write_bytes(b'')
    assert cli_main(['eval', str(lonely)]) == 2
    assert 'config.json' in capsys.readouterr().err
    # checked before the model is looked for
    with pytest.raises(ValueError, match="data_root is the folder of the fashion-mnist files; data 'synthetic' does"):
        evaluate_pretrained('asvit_nosuchvariant', data='synthetic', data_root=tmp_path)
    with pytest.raises(ValueError, match='--ema needs a trainer checkpoint'):
        load_pretrained('asvit_seed', ema=True)
    folder = Path(shutil.copytree(registry_root() / 'asvit_tiny.fmnist', tmp_path / 'copy'))
    other = folder / 'other.safetensors'  # not the folder's weights: it must not be scored as if it were
    other.write_bytes(b'not weights')
    with pytest.raises(ValueError, match=f'{other}: a safetensors file is evaluated through its folder, whose '
                                         f"weights are {folder / 'model.safetensors'}"):
        load_pretrained(str(other))
    with pytest.raises(ValueError, match=r"asvit_tiny.nope: asvit_tiny has no pretrained tag 'nope'; it has "
                                         r"\['asvit_tiny', 'asvit_tiny.fmnist'\]"):
        load_pretrained('asvit_tiny.nope')
    for missing in (tmp_path / 'no' / 'last.pth.tar', tmp_path / 'model.safetensors', tmp_path / 'weights.pth'):
        assert cli_main(['eval', str(missing)]) == 2
        assert capsys.readouterr().err == f'asvit eval: error: weights file not found: {missing}\n'
        with pytest.raises(FileNotFoundError, match=f'weights file not found: {missing}'):
            load_pretrained(missing)  # a Path, as well as a string
    for other in ('resnet18', 'asvit'):  # refused before timm fetches any weights
        with pytest.raises(ValueError, match=f"'{other}' is not a registered As-ViT variant"):
            load_pretrained(other)
    for option in ('--subset', '--batch-size'):
        assert cli_main(['eval', 'asvit_tiny.fmnist', option, '0']) == 2
        assert f"{option[2:].replace('-', '_')} must be an integer >= 1, got 0" in capsys.readouterr().err


def test_weights_expecting_another_normalisation_are_refused(tmp_path: Path):
    """A card whose mean and std are not those the data is prepared with would be scored on inputs it was not
    trained for: refused, naming both."""
    folder = Path(shutil.copytree(registry_root() / 'asvit_tiny.fmnist', tmp_path / 'asvit_meanprobe.fmnist'))
    config = json.loads((folder / 'config.json').read_text())
    config['architecture'] = 'asvit_meanprobe'
    config['pretrained_cfg'].update(mean=[0.5], std=[0.5])
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape('expects inputs normalised with mean [0.5] and std [0.5]; '
                                                   'fashion-mnist is prepared with mean [0.286')):
        evaluate_pretrained(f'local-dir:{folder}', subset=10)


def _score_imagenet_head_on_fmnist(tmp_path: Path) -> None:
    """Export a 1000-class model with a Fashion-MNIST input cfg and score it on Fashion-MNIST."""
    import timm
    import torch

    model = timm.create_model('asvit', genotype=GENOTYPE, num_classes=1000, in_chans=1)
    torch.save({'model': model.state_dict(), 'config': TrainConfig(genotype=GENOTYPE).to_dict()},
               tmp_path / 'wide.pth.tar')
    evaluate_pretrained(str(tmp_path / 'wide.pth.tar'), subset=10)


def test_uncached_hub_repo_offline_says_how_to_fix_it(tmp_path: Path):
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'home'), HF_HUB_CACHE=str(tmp_path / 'cache'))
    result = subprocess.run([sys.executable, '-m', 'asvit_zoo.cli', 'eval', 'hf-hub:asvit-zoo/not-cached', '--json'],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    for text in ('config.json is not in the Hugging Face cache', 'HF_HUB_OFFLINE=1 is set', 'local-dir:PATH'):
        assert text in result.stderr


def _shipped_weights():
    return [(card.name, tag) for card in load_registry() for tag in card.tags()
            if tag and card.weights_file(tag) is not None]


def test_weights_ship_with_the_package():
    shipped = _shipped_weights()
    assert shipped, 'registry/ ships no weights (expected at least the tiny Fashion-MNIST model)'
    for name, tag in shipped:
        size = next(c for c in load_registry() if c.name == name).weights_file(tag).stat().st_size
        assert size <= 10 * 2 ** 20, f'{name}.{tag}: {size} bytes of weights, more than 10 MiB'


def test_scores_are_whole_counts_of_images():
    result = evaluate_pretrained('asvit_tiny.fmnist', subset=500)
    for key in ('top1', 'top5'):  # not float32 percentages summed back (92.1999985961914 for 461 of 500)
        assert result[key] == 100 * round(result[key] * 5) / 500


@pytest.mark.parametrize('name,tag', _shipped_weights())
def test_shipped_weights_reproduce_their_card(name: str, tag: str):
    card = next(c for c in load_registry() if c.name == name).folder(tag)
    recorded = card.config['provenance']
    assert recorded['data'] == 'fashion-mnist'
    result = evaluate_pretrained(f'{name}.{tag}')
    assert result['images'] == 10000
    assert result['top1'] == pytest.approx(recorded['eval_top1'], abs=CARD_TOLERANCE)
    assert result['top5'] == pytest.approx(recorded['eval_top5'], abs=CARD_TOLERANCE)


ENV_SCRIPT = '''
import sys, timm, torch, asvit_zoo
from safetensors.torch import load_file
model = timm.create_model('asvit_envtest.fmnist', pretrained=True)
expected = load_file(sys.argv[1])
assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
print(timm.is_model('asvit_envtest'), model.num_classes)
'''


def test_extra_registry_from_the_environment(run: Path, tmp_path: Path):
    card = export_weights(run / 'last.pth.tar', 'asvit_envtest', 'fmnist', root=tmp_path / 'reg', genotype=GENOTYPE)
    env = dict(os.environ, ASVIT_ZOO_REGISTRY=str(tmp_path / 'reg'))
    result = subprocess.run([sys.executable, '-c', ENV_SCRIPT, str(card.path / 'model.safetensors')], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['True', '10']
    env['ASVIT_ZOO_REGISTRY'] = str(tmp_path / 'nowhere')
    result = subprocess.run([sys.executable, '-c', 'import asvit_zoo'], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and f'{tmp_path / "nowhere"} is not a folder' in result.stderr
