"""The trainer: recipes, CLI overrides, batched augmentation, exact resume and a 2-process DDP run (gloo)."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Optional

import pytest
import timm
import torch
from safetensors.torch import load_file

from asvit_zoo.asvit import AsViT
from asvit_zoo.cli import build_parser, main
from asvit_zoo.distributed import init_distributed
from asvit_zoo.evaluation import evaluate_pretrained
from asvit_zoo.hub import checkpoint_model, export_weights
from asvit_zoo.retokenization import schedule_cost
from asvit_zoo.train import (
    CHECKPOINT, METRICS, Trainer, TrainConfig, augment_batch, load_config, read_metrics, synthetic_images)
from conftest import torchrun

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / 'recipes'
TINY = '4,2,2,1|2,1,2,1|2,1,2,1|2,1,2,1|16,8'
# Every random draw of the loop is on: shuffling, zoom/crop/flip, Mixup/CutMix (numpy), drop path (torch),
# EMA, and the phase change from coarse to full tokens falls inside the first epoch.
TINY_RUN = [
    '--genotype', TINY, '--data', 'synthetic', '--img-size', '28', '--synthetic-train', '192',
    '--synthetic-eval', '64', '--batch-size', '32', '--epochs', '2', '--warmup-epochs', '1', '--lr', '2e-3',
    '--mixup', '0.2', '--cutmix', '1.0', '--mixup-prob', '0.5', '--drop-path', '0.1', '--scale-range', '1.3',
    '--model-ema', '--model-ema-decay', '0.9', '--retokenization', '0.2:8:2,0.2:6:1,0.6:4:1', '--device', 'cpu',
    '--no-progress',
]
LOSS_KEYS = ('train_loss', 'lr', 'tokenizer', 'train_macs', 'eval_loss', 'eval_top1', 'eval_top5', 'ema_loss',
             'ema_top1')


def _train(*args: str) -> None:
    assert main(['train', *args]) == 0


def _weights(run: Path) -> dict:
    return torch.load(run / CHECKPOINT, map_location='cpu', weights_only=False)


@pytest.mark.parametrize('name', ['fmnist_tiny.json', 'imagenet_paper.json'])
def test_recipes_load(name):
    cfg = load_config(RECIPES / name)
    assert isinstance(cfg, TrainConfig) and cfg.epochs >= 1


def test_imagenet_recipe_follows_the_paper_setup():
    cfg = load_config(RECIPES / 'imagenet_paper.json')
    assert (cfg.epochs, cfg.opt, cfg.img_size) == (300, 'adamw', 224)
    assert cfg.mixup == 0.8 and cfg.cutmix == 1.0 and cfg.smoothing == 0.1 and cfg.auto_augment


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['epochz'\]"):
        load_config(RECIPES / 'fmnist_tiny.json', epochz=3)
    with pytest.raises(ValueError, match='fractions must sum to 1'):
        load_config(retokenization='0.5:8:1')
    with pytest.raises(ValueError, match="amp must be 'none', 'bf16' or 'fp16'"):
        TrainConfig(amp='fp32')
    with pytest.raises(ValueError, match="data_root is the folder of the fashion-mnist files; data 'synthetic' does "
                                         'not read it'):
        TrainConfig(data='synthetic', data_root=str(tmp_path))
    (tmp_path / 'list.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match='a recipe is a mapping'):
        load_config(tmp_path / 'list.json')
    (tmp_path / 'typo.json').write_text('{"epochs": "3"}')  # a value of the wrong type in a recipe file
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got '3'"):
        load_config(tmp_path / 'typo.json')


def test_yaml_recipe_reads_exponents_as_numbers(tmp_path):
    (tmp_path / 'recipe.yaml').write_text('lr: 5e-4\nweight_decay: 5E-2\nwarmup_lr: 1.0e-6\nmin_lr: -0e+0\n')
    cfg = load_config(tmp_path / 'recipe.yaml')  # YAML 1.1 (PyYAML's safe_load) reads '5e-4' as a string
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_lr, cfg.min_lr) == (5e-4, 0.05, 1e-6, 0.0)
    (tmp_path / 'recipe.yaml').write_text('model: 1e5\n')
    with pytest.raises(ValueError, match='model must be a string, got 100000.0'):
        load_config(tmp_path / 'recipe.yaml')


@pytest.mark.parametrize('name, text, message', [
    ('missing.json', None, 'recipe file not found: {path}'),
    ('cut.json', '{"epochs": 1,', '{path}: not a valid JSON recipe (Expecting property name enclosed in double quotes: '
                                  'line 1 column 14 (char 13))'),
    ('cut.yaml', 'epochs: [1', "{path}: not a valid YAML recipe (while parsing a flow sequence"),
    ('latin1.json', '{"_comment": "r\xe9glages"}', "{path}: a recipe is UTF-8 text ('utf-8' codec can't decode byte "
                                                 '0xe9 in position 15'),
])
def test_cli_names_an_unreadable_recipe(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_bytes(text.encode('latin-1'))
    assert main(['train', '--config', str(path), '--output', str(tmp_path / 'run')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'asvit train: error: {message.format(path=path)}') and err.count('\n') == 1, err
    assert not (tmp_path / 'run').exists()


def test_a_finished_run_is_not_trained_over(tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'last.pth.tar').write_bytes(b'a checkpoint')
    assert main(['train', '--output', str(run), *TINY_RUN]) == 2
    assert f'{run} already holds a training run (last.pth.tar); pass --resume' in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ['last.pth.tar']


@pytest.mark.parametrize('args, message', [
    (['--stop-after', '-1'], 'stop_after must be a number of epochs >= 1, got -1'),
    (['--output', ''], "training run folder must be a path, got ''"),
])
def test_cli_refuses_a_bad_run_option_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(['train', '--output', 'run', *TINY_RUN, *args]) == 2
    assert capsys.readouterr().err == f'asvit train: error: {message}\n'
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason='a machine without CUDA')
def test_a_cuda_device_without_a_gpu_is_named(tmp_path, capsys):
    assert main(['train', '--output', str(tmp_path / 'run'), *TINY_RUN, '--device', 'cuda']) == 2
    assert "asvit train: error: device 'cuda': no CUDA GPU is available here" in capsys.readouterr().err


def test_cli_names_a_setting_out_of_range(tmp_path, capsys):
    assert main(['train', '--output', str(tmp_path / 'run'), *TINY_RUN, '--seed', str(2 ** 32)]) == 2
    assert r'seed must be an integer in [0, 4294967295], got 4294967296' in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_cli_options_override_the_recipe():
    args = build_parser().parse_args(['train', '--config', str(RECIPES / 'fmnist_tiny.json'), '--output', 'x',
                                      '--epochs', '3', '--lr', '0.01', '--model-ema', '--retokenization', 'short'])
    assert (args.epochs, args.lr, args.model_ema, args.retokenization) == (3, 0.01, True, 'short')
    assert not hasattr(args, 'batch_size')  # options not given leave the recipe's values


def test_train_help_describes_every_setting_and_marks_the_image_folder_ones(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(['train', '--help'])
    text = ''.join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for f in dataclasses.fields(TrainConfig):
        allowed = '' if f.metadata['range'] is None else f'({f.metadata["range"]})'  # e.g. (in [0, 1])
        assert ''.join((f.metadata['help'] + allowed).split()) + f'[{f.default}]' in text, f.name
    assert '--hflipFLOATprobabilityofahorizontalflip(in[0,1])[0.5]' in text
    for name in ('auto-augment', 're-prob', 'color-jitter', 'crop-pct', 'interpolation', 'workers'):
        assert re.search(rf'--{name}[A-Z]+ImageFolderonly:', text), name
    assert '--crop-paddingINTin-memorydataonly:' in text


def test_augment_batch_crops_and_flips_per_image():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    torch.manual_seed(0)
    out = augment_batch(x, padding=2, hflip=0.5)
    assert out.shape == x.shape
    torch.manual_seed(0)
    assert torch.equal(out, augment_batch(x, padding=2, hflip=0.5))
    assert torch.equal(augment_batch(x, padding=0, hflip=0.), x)
    assert torch.equal(augment_batch(x, padding=0, hflip=1.), x.flip(-1))
    assert torch.allclose(augment_batch(x, padding=0, hflip=0., scale_range=1.), x)


def test_augment_batch_draws_a_window_and_a_flip_for_each_image():
    """Each output is a window of its own zero-padded input, the same for every channel, flipped or not; the
    shifts (rows and columns) and the flips differ between images."""
    torch.manual_seed(0)
    x = torch.rand(64, 2, 5, 5) + 1  # no zero inside an image: a window is known by its padded pixels
    out = augment_batch(x, padding=2, hflip=0.5)
    padded = torch.nn.functional.pad(x, (2,) * 4)
    draws = []
    for image, source in zip(out, padded):
        found = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                 if torch.equal(image, (lambda w: w.flip(-1) if flip else w)(source[:, dy:dy + 5, dx:dx + 5]))]
        assert len(found) == 1, found
        draws.append(found[0])
    dys, dxs, flips = zip(*draws)
    assert len(set(dys)) > 1 and len(set(dxs)) > 1 and set(flips) == {False, True}


def test_augment_batch_zooms_about_the_centre():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 4:12, 4:12] = 1
    out = augment_batch(x, padding=0, hflip=0., scale_range=2.)
    area = out.sum(dim=(1, 2, 3))
    assert area.min() >= 64 / 4 * 0.9 and area.max() <= 64 * 4 * 1.1  # zoom factor in [1/2, 2]
    assert area.std() > 1  # a factor per image
    assert torch.allclose(out, out.flip(-1), atol=1e-5) and torch.allclose(out, out.flip(-2), atol=1e-5)


def test_fine_tuning_starts_from_the_shipped_weights_with_a_new_classifier(tmp_path):
    shipped = load_file(REPO_ROOT / 'registry' / 'asvit_tiny.fmnist' / 'model.safetensors')
    _train('--model', 'asvit_tiny.fmnist', '--pretrained', '--data', 'synthetic', '--synthetic-classes', '5',
           '--img-size', '28', '--synthetic-train', '64', '--synthetic-eval', '32', '--batch-size', '32',
           '--epochs', '1', '--warmup-epochs', '0', '--lr', '0', '--min-lr', '0', '--device', 'cpu', '--no-progress',
           '--output', str(tmp_path))
    trained = _weights(tmp_path)['model']  # learning rate 0: the weights it started from
    assert trained['head.fc.weight'].shape == (5, shipped['head.fc.weight'].shape[1])  # 10 classes shipped
    body = [k for k in shipped if not k.startswith('head.fc.')]
    assert len(body) == len(shipped) - 2 and all(torch.equal(trained[k], shipped[k]) for k in body)

    # the checkpoint records the genotype it trained, which its model name ('asvit_tiny.fmnist') gives only
    # without the tag: `asvit eval` and `asvit export` rebuild the model from it
    checkpoint = _weights(tmp_path)
    assert checkpoint['genotype'] == str(timm.create_model('asvit_tiny').genotype)
    older = tmp_path / 'older.pth.tar'  # as written before checkpoints recorded it: found through the name
    torch.save({k: v for k, v in checkpoint.items() if k != 'genotype'}, older)
    for path in (tmp_path / CHECKPOINT, older):
        model = checkpoint_model(path)
        assert str(model.genotype) == checkpoint['genotype'] and torch.equal(model.head.fc.weight,
                                                                             trained['head.fc.weight'])

    # exported as a variant outside the registry, it is fine-tuned from its folder (local-dir:): the trainer
    # registers the folder's variant before timm creates it
    folder = export_weights(tmp_path / CHECKPOINT, 'asvit_finetuned', 'synth5', root=tmp_path / 'registry').path
    again = tmp_path / 'again'
    _train('--model', f'local-dir:{folder}', '--pretrained', '--data', 'synthetic', '--synthetic-classes', '5',
           '--img-size', '28', '--synthetic-train', '32', '--synthetic-eval', '32', '--batch-size', '32',
           '--epochs', '1', '--warmup-epochs', '0', '--lr', '0', '--min-lr', '0', '--device', 'cpu', '--no-progress',
           '--output', str(again))
    weights = _weights(again)
    assert weights['genotype'] == checkpoint['genotype']
    assert all(torch.equal(weights['model'][k], v) for k, v in trained.items())


def test_synthetic_images_are_deterministic():
    a, la = synthetic_images(20, 4, 16, seed=3)
    b, lb = synthetic_images(20, 4, 16, seed=3)
    assert a.dtype == torch.uint8 and a.shape == (20, 1, 16, 16)
    assert torch.equal(a, b) and torch.equal(la, lb) and la.tolist()[:5] == [0, 1, 2, 3, 0]


def test_resume_continues_exactly(tmp_path):
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    _train('--output', str(straight), *TINY_RUN)
    _train('--output', str(resumed), '--stop-after', '1', *TINY_RUN)
    assert len(read_metrics(resumed / METRICS)) == 1
    _train('--output', str(resumed), '--resume')  # the run's own settings, from its config.json

    a, b = read_metrics(straight / METRICS), read_metrics(resumed / METRICS)
    assert [m['epoch'] for m in a] == [m['epoch'] for m in b] == [0, 1]
    assert a[0]['tokenizer'] == ['8:2', '6:1', '4:1'] and a[1]['tokenizer'] == ['4:1']
    for key in LOSS_KEYS:
        assert [m[key] for m in a] == [m[key] for m in b], key
    ca, cb = _weights(straight), _weights(resumed)
    for part in ('model', 'ema'):
        assert ca[part].keys() == cb[part].keys()
        assert all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part]), part
    assert 0 < a[-1]['train_macs'] < a[-1]['train_macs_full']


def test_compiled_training_steps_match_eager_ones(tmp_path):
    """--compile runs the training steps through torch.compile: one graph per tokenizer setting, the same losses
    as eager steps to float rounding, and checkpoints with the model's own tensor names."""
    args = ['--genotype', TINY, '--data', 'synthetic', '--img-size', '28', '--synthetic-train', '96',
            '--synthetic-eval', '32', '--batch-size', '32', '--epochs', '1', '--retokenization', '0.4:8:2,0.6:4:1',
            '--device', 'cpu', '--no-progress']
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _train('--output', str(tmp_path / 'compiled'), '--compile', 'eager', *args)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] == 2  # 8:2, then 4:1
    _train('--output', str(tmp_path / 'eager'), *args)
    (compiled,), (eager,) = read_metrics(tmp_path / 'compiled' / METRICS), read_metrics(tmp_path / 'eager' / METRICS)
    assert compiled['tokenizer'] == eager['tokenizer'] == ['8:2', '4:1']
    for key in ('train_loss', 'eval_loss'):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4), key
    weights_compiled, weights_eager = _weights(tmp_path / 'compiled')['model'], _weights(tmp_path / 'eager')['model']
    assert weights_compiled.keys() == weights_eager.keys()
    assert all(torch.allclose(weights_compiled[k], weights_eager[k], atol=1e-5) for k in weights_eager)


def test_an_epoch_that_returns_to_a_setting_is_scored_on_the_grid_it_ended_on(tmp_path):
    run = tmp_path / 'run'
    _train('--output', str(run), '--config', str(REPO_ROOT / 'recipes' / 'fmnist_tiny.json'), '--genotype', TINY,
           '--train-subset', '256', '--eval-subset', '50', '--epochs', '2', '--batch-size', '64', '--no-progress',
           '--retokenization', '0.125:8:2,0.25:6:1,0.125:8:2,0.5:4:1', '--stop-after', '1')  # steps: 8:2 6:1 6:1 8:2
    (first,) = read_metrics(run / METRICS)
    assert first['tokenizer'] == ['8:2', '6:1', '8:2'] and first['eval_phase_tokenizer'] == '8:2'


def test_an_epoch_ending_on_coarse_tokens_is_also_scored_on_that_grid(tmp_path):
    run = tmp_path / 'run'
    args = ['--output', str(run), '--config', str(REPO_ROOT / 'recipes' / 'fmnist_tiny.json'), '--genotype', TINY,
            '--train-subset', '256', '--eval-subset', '100', '--epochs', '2', '--batch-size', '64',
            '--retokenization', '0.5:8:2,0.5:4:1', '--no-progress']
    _train(*args, '--stop-after', '1')
    (first,) = read_metrics(run / METRICS)
    assert first['tokenizer'] == ['8:2'] and first['eval_phase_tokenizer'] == '8:2'
    at_coarse = evaluate_pretrained(str(run / CHECKPOINT), subset=100, tokenizer='8:2')
    at_full = evaluate_pretrained(str(run / CHECKPOINT), subset=100)
    assert first['eval_phase_loss'] == pytest.approx(at_coarse['loss'], rel=1e-5)
    assert first['eval_phase_top1'] == pytest.approx(at_coarse['top1'], abs=1e-6)
    assert first['eval_loss'] == pytest.approx(at_full['loss'], rel=1e-5) != at_coarse['loss']
    _train(*args, '--resume')
    assert 'eval_phase_tokenizer' not in read_metrics(run / METRICS)[1]  # ended on full tokens


def test_scoring_coarse_epochs_leaves_training_unchanged(tmp_path, monkeypatch):
    args = ['--genotype', TINY, '--data', 'synthetic', '--synthetic-train', '128', '--synthetic-eval', '32',
            '--img-size', '32', '--batch-size', '32', '--epochs', '2', '--retokenization', '0.5:8:2,0.5:4:1',
            '--device', 'cpu', '--no-progress']
    _train('--output', str(tmp_path / 'scored'), *args)
    full_only = Trainer.evaluate
    monkeypatch.setattr(Trainer, 'evaluate', lambda self, model, tokenizer=None: full_only(self, model)
                        if tokenizer is None else {'loss': 0., 'top1': 0., 'top5': 0.})
    _train('--output', str(tmp_path / 'unscored'), *args)
    scored, unscored = _weights(tmp_path / 'scored')['model'], _weights(tmp_path / 'unscored')['model']
    assert read_metrics(tmp_path / 'scored' / METRICS)[0]['eval_phase_top1'] > 0
    assert all(torch.equal(scored[k], unscored[k]) for k in scored)


@pytest.mark.parametrize('opt, fused', [('adamw', True), ('lookahead_adamw', True), ('momentum', True),
                                        ('lamb', None)])
def test_optimizer_takes_torchs_fused_kernel_where_there_is_one(tmp_path, opt, fused):
    cfg = load_config(genotype=TINY, data='synthetic', synthetic_train=64, synthetic_eval=32, img_size=28,
                      batch_size=32, epochs=1, opt=opt, device='cpu')
    optimizer = Trainer(cfg, tmp_path, progress=False).optimizer
    assert getattr(optimizer, 'base_optimizer', optimizer).defaults.get('fused') is fused


def test_learning_rate_follows_linear_warmup_then_cosine_per_update(tmp_path):
    """The recorded lr of each epoch (after its last update t of T = 8, warm-up over 4): warmup_lr + t / 4 x
    (lr - warmup_lr) while t < 4, then min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2, and min_lr at the end."""
    lr, warmup_lr, min_lr = 1e-2, 1e-3, 1e-4
    cfg = load_config(genotype=TINY, data='synthetic', synthetic_train=64, synthetic_eval=32, img_size=28,
                      batch_size=32, epochs=4, warmup_epochs=2, lr=lr, warmup_lr=warmup_lr, min_lr=min_lr,
                      device='cpu')
    metrics = Trainer(cfg, tmp_path / 'run', progress=False).run()
    cosine = [min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t / 8)) / 2 for t in (4, 6)]
    assert [m['lr'] for m in metrics] == pytest.approx([warmup_lr + 2 / 4 * (lr - warmup_lr), *cosine, min_lr],
                                                       rel=1e-9)


def test_ema_is_the_moving_average_of_the_weights_and_what_ema_loading_reads(tmp_path):
    """As in timm's train.py, the first update copies the weights; each later one moves the EMA by 1 - decay
    towards them. The checkpoint carries the EMA, and loading with ema=True returns it, not the trained weights."""
    cfg = load_config(genotype=TINY, data='synthetic', synthetic_train=32, synthetic_eval=32, img_size=28,
                      batch_size=32, epochs=2, warmup_epochs=0, model_ema=True, model_ema_decay=0.9, device='cpu')
    trainer = Trainer(cfg, tmp_path / 'run', progress=False)
    names = [name for name, _ in trainer.model.named_parameters()]
    trainer.train_epoch(0)  # one step an epoch
    first = {k: trainer.model.state_dict()[k].clone() for k in names}
    assert all(torch.equal(trainer.ema.module.state_dict()[k], first[k]) for k in names)
    trainer.train_epoch(1)
    second, ema = trainer.model.state_dict(), trainer.ema.module.state_dict()
    for k in names:
        assert torch.allclose(ema[k], 0.9 * first[k] + 0.1 * second[k], rtol=1e-5, atol=1e-7), k
    metrics = trainer.run()  # trains both epochs again (start_epoch is 0), writing the checkpoint
    trained, ema = trainer.model.state_dict(), trainer.ema.module.state_dict()
    assert not torch.equal(ema['head.fc.weight'], trained['head.fc.weight'])
    checkpoint = tmp_path / 'run' / CHECKPOINT
    assert all(torch.equal(v, ema[k]) for k, v in checkpoint_model(checkpoint, ema=True).state_dict().items())
    assert all(torch.equal(v, trained[k]) for k, v in checkpoint_model(checkpoint).state_dict().items())
    assert 0 <= metrics[-1]['ema_top1'] <= 100


def test_resume_refuses_other_settings(tmp_path):
    run = tmp_path / 'run'
    _train('--output', str(run), '--stop-after', '1', *TINY_RUN)
    with pytest.raises(ValueError, match=r'was written with other settings \(lr: saved 0.\d+, given 0.01\); resume '
                                         r'with the same config$'):
        from asvit_zoo.train import train
        train(load_config(**{**json.loads((run / 'config.json').read_text()), 'lr': 1e-2}), run, resume=True)
    assert main(['train', '--output', str(tmp_path / 'none'), '--resume', *TINY_RUN]) == 2
    # a checkpoint of an earlier version, without a setting added since, resumes with that setting's default
    state = torch.load(run / CHECKPOINT, weights_only=False)  # our own file
    del state['config']['eval_batch_size']
    torch.save(state, run / CHECKPOINT)
    assert main(['train', '--output', str(run), '--resume', *TINY_RUN]) == 0
    assert len(read_metrics(run / METRICS)) == 2


def test_resume_compares_the_schedule_by_its_phases_not_its_name(tmp_path, monkeypatch):
    """A run saved under a shipped name whose phases have changed since is refused, naming both; given as its
    saved phases, it resumes."""
    from asvit_zoo.retokenization import SCHEDULES
    from asvit_zoo.train import train

    old = '0.6:8:2,0.2:6:1,0.2:4:1'
    settings = dict(genotype=TINY, data='synthetic', synthetic_train=96, synthetic_eval=32, img_size=28,
                    batch_size=32, epochs=2, device='cpu')
    run = tmp_path / 'run'
    with monkeypatch.context() as patch:
        patch.setitem(SCHEDULES, 'short', old)  # 'short' as an earlier version shipped it
        train(load_config(**settings, retokenization='short'), run, progress=False, stop_after=1)
    with pytest.raises(ValueError, match=re.escape(f"retokenization: saved 'short' ({old}), given 'short' "
                                                   f"({SCHEDULES['short']})")):
        train(load_config(**settings, retokenization='short'), run, resume=True, progress=False)
    result = train(load_config(**settings, retokenization=old), run, resume=True, progress=False)
    assert [m['epoch'] for m in result.metrics] == [0, 1]


@pytest.mark.parametrize('device, local_rank, expected', [('cuda', '1', 'cuda:1'), ('cuda:0', '1', 'cuda:0')])
def test_plain_cuda_device_is_the_local_rank_gpu(monkeypatch, device, local_rank, expected):
    # torch.cuda.set_device refuses an index-less 'cuda' (found on a GPU machine); no GPU is needed to check
    # which device the trainer picks, so set_device is recorded instead of called (on two GPUs, as it were).
    chosen = []
    monkeypatch.setattr(torch.cuda, 'set_device', chosen.append)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setenv('LOCAL_RANK', local_rank)
    _, dev = init_distributed(device)
    assert dev == torch.device(expected) and chosen == [dev]


def test_two_process_ddp_run_on_cpu(tmp_path):
    run = tmp_path / 'ddp'
    proc = torchrun([str(REPO_ROOT / 'tools' / 'train.py'), '--output', str(run), *TINY_RUN, '--batch-size', '16'])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = read_metrics(run / METRICS)
    assert [m['epoch'] for m in metrics] == [0, 1]
    state = _weights(run)
    assert state['epoch'] == 1 and len(state['rng']) == 2  # the RNG states of both processes
    assert not any(k.startswith('module.') for k in state['model'])
    assert all(torch.isfinite(v).all() for v in state['model'].values())
    assert 0 <= metrics[-1]['eval_top1'] <= 100
    # the MAC account counts both processes' images: 192 images in steps of 2 x 16 make 6 steps an epoch, 12 in
    # all, of which the schedule gives 3 to 8:2, 2 to 6:1 and 7 to full tokens
    cost = schedule_cost(AsViT(TINY, num_classes=10, in_chans=1), '0.2:8:2,0.2:6:1,0.6:4:1', (1, 28, 28))
    phases = [cost.schedule.phase_at(step, 12) for step in range(12)]
    assert [(p.stride, p.dilation) for p in phases] == [(8, 2)] * 3 + [(6, 1)] * 2 + [(4, 1)] * 7
    assert metrics[-1]['train_macs'] == sum(cost.macs_of(p.stride, p.dilation) for p in phases) * 2 * 16
    assert metrics[-1]['train_macs_full'] == cost.full_macs * 12 * 2 * 16


def _image_folder(root: Path, n: int = 48, val_every: int = 4, skip_val_class: Optional[int] = None) -> Path:
    """An ImageFolder root of ``n`` 32x32 RGB images of 3 classes; every ``val_every``-th one goes to val/."""
    from PIL import Image

    images, labels = synthetic_images(n, 3, 32, seed=0, in_chans=3)
    for i, (image, label) in enumerate(zip(images, labels)):
        split = 'val' if i % val_every == 0 else 'train'
        if split == 'val' and int(label) == skip_val_class:
            continue
        folder = root / split / f'class{int(label)}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f'{i}.png')
    return root


def test_image_folder_run_through_timm_loaders(tmp_path):
    root = _image_folder(tmp_path / 'folder')
    run = tmp_path / 'run'
    _train('--output', str(run), '--genotype', TINY, '--data', str(root), '--img-size', '32', '--batch-size', '8',
           '--epochs', '1', '--workers', '0', '--auto-augment', 'rand-m9-mstd0.5-inc1', '--re-prob', '0.25',
           '--mixup', '0.8', '--cutmix', '1.0', '--layer-decay', '0.75', '--retokenization', '0.5:8:2,0.5:4:1',
           '--device', 'cpu', '--no-progress')
    (record,) = read_metrics(run / METRICS)
    assert record['tokenizer'] == ['8:2', '4:1'] and 0 <= record['eval_top1'] <= 100
    assert _weights(run)['model']['head.fc.weight'].shape == (3, 64)
    # `asvit eval` scores the checkpoint as the trainer did, though train/ has fewer images than one eval batch
    result = evaluate_pretrained(str(run / CHECKPOINT), data=str(root))  # batch 256
    assert result['images'] == 12 and result['top1'] == pytest.approx(record['eval_top1'], abs=1e-6)
    assert result['loss'] == pytest.approx(record['eval_loss'], rel=1e-5)


IMAGE_FOLDER_RUN = ['--genotype', TINY, '--img-size', '32', '--batch-size', '8', '--epochs', '2', '--warmup-epochs',
                    '0', '--auto-augment', 'rand-m9-mstd0.5-inc1', '--re-prob', '0.25', '--device', 'cpu',
                    '--no-progress']


def test_image_folder_resume_with_workers_continues_exactly(tmp_path):
    """Loader workers draw their augmentation seeds from the restored RNG: two workers, stop, resume, same run."""
    root = str(_image_folder(tmp_path / 'folder'))
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    _train('--output', str(straight), '--data', root, '--workers', '2', *IMAGE_FOLDER_RUN)
    _train('--output', str(resumed), '--data', root, '--workers', '2', '--stop-after', '1', *IMAGE_FOLDER_RUN)
    _train('--output', str(resumed), '--data', root, '--workers', '2', '--resume', *IMAGE_FOLDER_RUN)
    a, b = read_metrics(straight / METRICS), read_metrics(resumed / METRICS)
    assert [m['train_loss'] for m in a] == [m['train_loss'] for m in b] and len(a) == 2
    ca, cb = _weights(straight)['model'], _weights(resumed)['model']
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_image_folder_labels_subsets_and_processes(tmp_path):
    from asvit_zoo.distributed import DistEnv
    from asvit_zoo.train import build_data

    root = _image_folder(tmp_path / 'folder', skip_val_class=1)  # val/ lacks class1: labels follow train/
    cfg = TrainConfig(genotype=TINY, data=str(root), img_size=32, batch_size=4, workers=0, device='cpu')
    data = build_data(cfg, DistEnv(), torch.device('cpu'))
    labels = torch.cat([y for _, y in data.eval_loader])
    assert data.num_classes == 3 and sorted(set(labels.tolist())) == [0, 2] and len(labels) == 8
    cfg = TrainConfig(genotype=TINY, data=str(root), img_size=32, batch_size=4, workers=0, device='cpu',
                      train_subset=10, eval_subset=5)
    data = build_data(cfg, DistEnv(), torch.device('cpu'))
    assert len(data.train_loader.dataset) == 10 and len(data.eval_loader.dataset) == 5
    with pytest.raises(ValueError, match='36 training images are fewer than one batch of 64 x 1 processes'):
        build_data(TrainConfig(data=str(root), img_size=32, batch_size=64, workers=0), DistEnv(), torch.device('cpu'))
    (root / 'val' / 'class9').mkdir()
    (root / 'val' / 'class9' / 'x.png').write_bytes((next((root / 'val' / 'class0').iterdir())).read_bytes())
    with pytest.raises(ValueError, match=r"val has classes that .*train lacks: \['class9'\]"):
        build_data(TrainConfig(data=str(root), img_size=32, batch_size=4, workers=0), DistEnv(), torch.device('cpu'))


def test_two_processes_score_each_image_folder_val_image_once(tmp_path):
    root = _image_folder(tmp_path / 'folder', n=60)  # 15 val images: not a multiple of 2
    run = tmp_path / 'ddp'
    proc = torchrun([str(REPO_ROOT / 'tools' / 'train.py'), '--output', str(run), '--data', str(root),
                     '--workers', '0', *IMAGE_FOLDER_RUN, '--epochs', '1',
                     '--seed', str(2 ** 32 - 1)])  # process 1 seeds 2**32 - 1 + 1, wrapped to 0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = read_metrics(run / METRICS)
    assert record['eval_images'] == 15
    assert proc.stdout.count(': eval top-1 ') == 1  # process 0 alone prints the summary
    assert round(record['eval_top1'] * 15 / 100, 6) == round(record['eval_top1'] * 15 / 100)  # whole images right


def test_imagenet_recipe_augments_at_every_magnitude(tmp_path):
    """The recipe's RandAugment (rand-m9-mstd0.5-inc1) draws its top magnitude now and then, where Posterize keeps
    0 bits: about 2 images in 1000 with Pillow 13, which refuses that (pillow<13 is pinned for it)."""
    import random

    from PIL import Image

    from asvit_zoo.distributed import DistEnv
    from asvit_zoo.train import build_data

    cfg = load_config(RECIPES / 'imagenet_paper.json', data=str(_image_folder(tmp_path / 'data')), img_size=32,
                      batch_size=8, workers=0, device='cpu')
    transform = build_data(cfg, DistEnv(), torch.device('cpu')).train_loader.dataset.transform
    image = Image.new('RGB', (32, 32), (200, 120, 40))
    random.seed(0)
    torch.manual_seed(0)
    assert all(transform(image).shape == (3, 32, 32) for _ in range(3000))


def test_model_and_genotype(tmp_path):
    from asvit_zoo.train import build_model

    cfg = load_config(RECIPES / 'fmnist_tiny.json', model='asvit_seed')  # another model replaces the recipe's
    assert cfg.genotype is None and build_model(cfg, 10, 1).num_classes == 10
    assert load_config(RECIPES / 'fmnist_tiny.json', model='asvit').genotype is not None  # the same model keeps it
    (tmp_path / 'no_model.json').write_text(json.dumps({'genotype': TINY}))  # the default model, 'asvit'
    assert load_config(tmp_path / 'no_model.json', model='asvit').genotype == TINY
    with pytest.raises(ValueError, match="model 'asvit_small' has its own genotype; genotype '.*' applies to model "
                                         "'asvit' only"):
        build_model(TrainConfig(model='asvit_small', genotype=TINY), 10, 1)
    with pytest.raises(ValueError, match="model 'asvit' needs a genotype"):
        build_model(TrainConfig(), 10, 1)


@pytest.mark.parametrize('setting,message', [
    (dict(sched='plateau'), "sched 'plateau' is not supported: the trainer steps the schedule on every update"),
    (dict(sched='none'), "sched 'none' is not supported"),
    (dict(mixup=0.5, batch_size=15), 'mixup/cutmix need an even batch_size .* got 15'),
    (dict(synthetic_eval=0), 'synthetic_eval must be an integer >= 1, got 0'),
    (dict(genotype='4,8,3|4,2,3|4,2,3|4,1,6|16'),
     r"genotype '4,8,3\|4,2,3\|4,2,3\|4,1,6\|16' is a seed genotype; training needs the scaled form"),
    (dict(synthetic_classes=0), 'synthetic_classes must be an integer >= 1, got 0'),
    (dict(interpolation='foo'), r"interpolation must be one of timm's modes \[.*'bicubic'.*\], got 'foo'"),
    (dict(auto_augment='foo'), "auto_augment 'foo' is not a timm policy"),
    (dict(eval_subset=-5), 'eval_subset must be an integer >= 1 or unset, got -5'),
    (dict(eval_batch_size=0), 'eval_batch_size must be an integer >= 1 or unset, got 0'),
    (dict(epochs='3'), "epochs must be an integer >= 1, got '3'"),
    (dict(batch_size=2.5), 'batch_size must be an integer >= 1, got 2.5'),
    (dict(lr='fast'), "lr must be a finite number >= 0, got 'fast'"),
    (dict(lr=float('nan')), 'lr must be a finite number >= 0, got nan'),
    (dict(model_ema='yes'), "model_ema must be true or false, got 'yes'"),
    (dict(opt=3), 'opt must be a string, got 3'),
    (dict(hflip=1.5), r'hflip must be a finite number in \[0, 1\], got 1.5'),
    (dict(smoothing=1.0), r'smoothing must be a finite number in \[0, 1\), got 1.0'),
    (dict(crop_pct=0), r'crop_pct must be a finite number in \(0, 1\], got 0'),
    (dict(layer_decay=0.), 'layer_decay must be a finite number > 0 or unset, got 0.0'),
    (dict(workers=-1), 'workers must be an integer >= 0, got -1'),
    (dict(scale_range=0.5), 'scale_range must be a finite number >= 1, got 0.5'),
    (dict(seed=2 ** 32), r'seed must be an integer in \[0, 4294967295\], got 4294967296'),
    (dict(compile='fast'), r"compile must be a torch.compile backend \(.*inductor.*\), got 'fast'"),
])
def test_settings_are_checked(setting, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**setting)


@pytest.mark.parametrize('content', [b'', b'not a checkpoint', 'state dict', 'list'])
def test_resume_names_a_bad_checkpoint(tmp_path, content, capsys):
    run = tmp_path / 'run'
    _train('--output', str(run), '--stop-after', '1', *TINY_RUN)
    path = run / CHECKPOINT
    if content == 'state dict':
        torch.save(_weights(run)['model'], path)
    elif content == 'list':
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    assert main(['train', '--output', str(run), '--resume', *TINY_RUN]) == 2
    err = capsys.readouterr().err
    assert f'asvit train: error: {path}: not a' in err and 'Traceback' not in err


def test_evaluation_scores_in_eval_mode_and_keeps_the_models_modes():
    from contextlib import nullcontext

    from asvit_zoo.distributed import DistEnv
    from asvit_zoo.train import build_data, evaluate

    cfg = TrainConfig(genotype=TINY, data='synthetic', img_size=32, batch_size=8, train_subset=8, eval_subset=16,
                      workers=0, device='cpu')
    data = build_data(cfg, DistEnv(), torch.device('cpu'))
    model = timm.create_model('asvit', genotype=TINY, num_classes=data.num_classes, in_chans=1, drop_rate=0.5)
    model.stages[1].eval()  # a tree of mixed modes, as a caller left it
    first = evaluate(model, data, DistEnv(), torch.device('cpu'), nullcontext)
    assert model.training and not model.stages[1].training and model.stages[2].training
    # dropout is off while scoring: a second evaluation gives the same loss
    assert evaluate(model, data, DistEnv(), torch.device('cpu'), nullcontext) == first and first['images'] == 16
