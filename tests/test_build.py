"""``asvit build`` end to end on a tiny preset: every stage runs for real (search, scaling, training, export,
evaluation, report), a build killed mid-training and restarted ends with the results of an uninterrupted one,
and the variants it produced load with ``timm.create_model`` afterwards."""
import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from asvit_zoo.build import PRESET_FILE, STAGES_FILE, _evaluate, _Stages, build, load_preset
from asvit_zoo.registry import registry_root
from asvit_zoo.train import METRICS, read_metrics

NAME = 'asvit_tb_a'
TINY_PRESET: Dict[str, Any] = {
    'description': 'Tiny preset of the tests.',
    'search': {'steps': 3, 'repeat': 1, 'batch_size': 4, 'image_size': 32, 'measures': ['ntk', 'exp'],
               'data': 'fashion-mnist', 'device': 'cpu', 'seed': 0},
    'scale': {'budgets': [2500000], 'names': [NAME], 'upper_limit': 4000000, 'image_size': 32, 'repeat': 1,
              'batch_size': 4, 'data': 'fashion-mnist', 'seed': 0, 'device': 'cpu'},
    'train': {'data': 'fashion-mnist', 'img_size': 28, 'epochs': 3, 'batch_size': 64, 'train_subset': 1024,
              'eval_subset': 200, 'lr': 0.002, 'warmup_epochs': 0, 'retokenization': '0.5:8:2,0.5:4:1',
              'seed': 0, 'device': 'cpu'},
    'tag': 'fmnist',
    'evaluate': {'subset': 200, 'batch_size': 200, 'device': 'cpu'},
}
TIMED = {'seconds', 'wall_seconds', 'train_time'}
REGISTRY = registry_root()


@pytest.fixture(scope='module')
def preset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('preset') / 'tiny.json'
    path.write_text(json.dumps(TINY_PRESET))
    return path


@pytest.fixture(scope='module')
def uninterrupted(preset_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp('build_a')
    build(load_preset(preset_file), folder, progress=False, log=lambda _: None)
    return folder


def _untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMED}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _stage_outputs(folder: Path) -> Dict[str, Any]:
    done = json.loads((folder / STAGES_FILE).read_text())
    return {stage: _untimed(record['outputs']) for stage, record in done.items()}


def test_build_runs_every_stage(uninterrupted: Path):
    outputs = _stage_outputs(uninterrupted)
    assert sorted(outputs) == sorted(['search', 'scale', f'train/{NAME}', f'export/{NAME}', f'evaluate/{NAME}'])
    trained, scored = outputs[f'train/{NAME}'], outputs[f'evaluate/{NAME}']
    assert scored['images'] == 200
    assert scored['top1'] == pytest.approx(trained['top1'], abs=1e-6)  # the export scores what the trainer saw
    assert trained['train_macs'] < trained['train_macs_full']  # the coarse phase saved MACs
    report = (uninterrupted / 'report.md').read_text()
    genotype = outputs['scale']['variants'][0]['genotype'].replace('|', '\\|')
    assert f'| {NAME}.fmnist | `{genotype}` |' in report
    row = next(line for line in report.splitlines() if line.startswith(f'| {NAME}.fmnist |'))
    cells = [c.strip() for c in re.split(r'(?<!\\)\|', row)[1:-1]]  # an escaped | inside the genotype cell stays
    assert cells[2:8] == [f"{trained['params'] / 1e6:.2f}", f"{trained['gmacs']:.4f}", f"{scored['top1']:.2f}",
                          f"{scored['top5']:.2f}", f"{trained['train_macs'] / 1e12:.2f}",
                          f"{trained['train_macs'] / trained['train_macs_full']:.1%}"]
    for png in ('accuracy.png', 'search/curves.png', 'scale/trajectory.png', f'train/{NAME}/schedule.png'):
        assert (uninterrupted / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png
        assert f']({png})' in report


def test_cards_record_a_command_that_regenerates_the_build(uninterrupted: Path, preset_file: Path):
    card = json.loads((uninterrupted / 'registry' / NAME / 'config.json').read_text())
    command = shlex.split(card['provenance']['command'])
    preset_copy = uninterrupted / 'preset.json'  # a preset file of the user's may move: the build keeps a copy
    assert command == ['asvit', 'build', '--preset', str(preset_copy), '--out', str(uninterrupted)]
    assert load_preset(preset_copy) == load_preset(preset_file)


def test_evaluation_defaults_to_the_training_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import asvit_zoo.evaluation as evaluation

    seen = {}

    @functools.wraps(evaluation.evaluate_pretrained)  # its signature: the preset's evaluate settings
    def record(model: str, **options: Any) -> Dict[str, Any]:
        seen.update(options)
        return dict(top1=1., top5=2., loss=3., images=4)

    monkeypatch.setattr(evaluation, 'evaluate_pretrained', record)
    preset = load_preset('imagenet-paper').with_data(str(tmp_path))  # an ImageFolder root (an existing folder)
    _evaluate(dataclasses.replace(preset, evaluate={}), 'x')
    assert seen['data'] == str(tmp_path)
    _evaluate(dataclasses.replace(preset, evaluate={'data': 'fashion-mnist'}), 'x')
    assert seen['data'] == 'fashion-mnist'


def test_a_finished_build_is_skipped(uninterrupted: Path, preset_file: Path):
    before = (uninterrupted / STAGES_FILE).read_text()
    lines = []
    build(load_preset(preset_file), uninterrupted, progress=False, log=lines.append)
    assert sum('skipped' in line for line in lines) == 5
    assert (uninterrupted / STAGES_FILE).read_text() == before


def test_a_changed_preset_reruns_only_what_it_changes(uninterrupted: Path, tmp_path: Path):
    folder = Path(shutil.copytree(uninterrupted, tmp_path / 'build_c'))
    changed = tmp_path / 'changed.json'
    # The search's inputs change but not its result (max_params spelled out at its default): it runs again, and
    # finds the seed it found before, so scaling and training are skipped; the evaluation's options change too.
    changed.write_text(json.dumps(dict(TINY_PRESET, search=dict(TINY_PRESET['search'], max_params=None),
                                       evaluate=dict(TINY_PRESET['evaluate'], batch_size=100))))
    lines: List[str] = []
    build(load_preset(changed), folder, progress=False, log=lines.append)
    assert [line for line in lines if line.endswith('running')] == ['[search] running', f'[evaluate/{NAME}] running']
    assert sum('skipped' in line for line in lines) == 3  # training, above all, is not repeated

    renamed = 'asvit_tb_renamed'  # the same variant under another name: the old one leaves the build
    changed.write_text(json.dumps(dict(TINY_PRESET, scale=dict(TINY_PRESET['scale'], names=[renamed]))))
    build(load_preset(changed), folder, progress=False, log=lambda _: None)
    assert sorted(p.name for p in (folder / 'registry').iterdir()) == [renamed, f'{renamed}.fmnist']
    assert [p.name for p in (folder / 'train').iterdir()] == [renamed]
    assert not any(NAME in stage for stage in json.loads((folder / STAGES_FILE).read_text()))
    assert NAME not in (folder / 'report.md').read_text() and renamed in (folder / 'report.md').read_text()


def test_interrupted_work_resumes_when_its_own_inputs_are_unchanged(tmp_path: Path):
    """An earlier stage that runs again with other inputs but the same outputs leaves the interrupted work of a
    later stage resumable: what the later stage uses of it is part of its own inputs."""
    train_in = {'train': {'epochs': 3}, 'genotype': 'G'}
    stages = _Stages(tmp_path)
    stages.complete('search', {'search': {'steps': 3}}, {'seed_genotype': 'S'}, 1.0)
    assert stages.start('train/a', train_in)  # then killed: no outputs recorded
    stages = _Stages(tmp_path)  # the next build, with a search setting spelled out
    assert stages.outputs('search', {'search': {'steps': 3, 'max_params': None}}) is None
    assert not stages.start('search', {'search': {'steps': 3, 'max_params': None}})  # its own inputs changed
    stages.complete('search', {'search': {'steps': 3, 'max_params': None}}, {'seed_genotype': 'S'}, 1.0)
    assert stages.outputs('train/a', train_in) is None and stages.start('train/a', train_in)
    assert not _Stages(tmp_path).start('train/a', dict(train_in, genotype='H'))  # another genotype: from scratch


@pytest.mark.parametrize('text', ['[]', '{"search": {"outputs": {}}}',
                                  '{"search": {"fingerprint": "f", "outputs": 1}}'])
def test_a_damaged_stage_record_is_named(tmp_path: Path, text: str):
    (tmp_path / STAGES_FILE).write_text(text)
    with pytest.raises(ValueError, match=f'{tmp_path / STAGES_FILE}: damaged, not a record of build stages; delete '
                                         f'it'):
        _Stages(tmp_path)  # as a build reads it


def test_the_preset_copy_is_that_of_the_stages_that_ran(uninterrupted: Path, tmp_path: Path):
    folder = Path(shutil.copytree(uninterrupted, tmp_path / 'build_p'))
    before = (folder / PRESET_FILE).read_text()
    changed = dataclasses.replace(load_preset(folder / PRESET_FILE), train=dict(TINY_PRESET['train'], epochs=5))
    lines: List[str] = []
    build(changed, folder, until='search', progress=False, log=lines.append)  # the search is skipped
    assert lines == ['[search] done before (same inputs): skipped'] and (folder / PRESET_FILE).read_text() == before


def _cli_build(preset: Path, folder: Path) -> str:
    """``asvit build`` in a process of its own; its output."""
    result = subprocess.run([sys.executable, '-m', 'asvit_zoo.cli', 'build', '--preset', str(preset), '--out',
                             str(folder), '--no-progress'], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_a_rebuild_with_new_variants_replaces_only_what_the_build_made(uninterrupted: Path, tmp_path: Path):
    folder = Path(shutil.copytree(uninterrupted, tmp_path / 'build_d'))
    shutil.copytree(REGISTRY / 'asvit_seed', folder / 'registry' / 'asvit_seed')  # the user's own folders
    (folder / 'train' / 'my_experiment').mkdir()
    before = _stage_outputs(folder)['scale']['variants'][0]['genotype']
    changed = tmp_path / 'changed.json'  # another budget (so another genotype under the same name), another tag
    short = dict(TINY_PRESET['train'], epochs=1)
    changed.write_text(json.dumps(dict(TINY_PRESET, scale=dict(TINY_PRESET['scale'], budgets=[3200000]), train=short,
                                       tag='fm2')))
    _cli_build(changed, folder)  # in a process of its own: this one registered the variant's earlier genotype
    genotype = _stage_outputs(folder)['scale']['variants'][0]['genotype']
    assert genotype != before
    assert sorted(p.name for p in (folder / 'registry').iterdir()) == ['asvit_seed', NAME, f'{NAME}.fm2']
    assert sorted(p.name for p in (folder / 'train').iterdir()) == [NAME, 'my_experiment']
    exported = json.loads((folder / 'registry' / f'{NAME}.fm2' / 'config.json').read_text())
    assert exported['model_args']['genotype'] == genotype

    changed.write_text(json.dumps(dict(TINY_PRESET, scale=dict(TINY_PRESET['scale'], budgets=[3200000]), train=short)))
    lines = _cli_build(changed, folder).splitlines()  # the tag alone: the same weights, exported again
    assert [line for line in lines if line.endswith('running')] == [f'[export/{NAME}] running']
    assert sorted(p.name for p in (folder / 'registry').iterdir()) == ['asvit_seed', NAME, f'{NAME}.fmnist']


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_results(uninterrupted: Path, preset_file: Path, tmp_path: Path):
    folder = tmp_path / 'build_b'
    command = [sys.executable, '-m', 'asvit_zoo.cli', 'build', '--preset', str(preset_file), '--out', str(folder),
               '--no-progress']
    metrics = folder / 'train' / NAME / METRICS
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    checkpoint = metrics.parent / 'last.pth.tar'  # written after the metrics
    while not (checkpoint.is_file() and metrics.read_text().count('\n') >= 1):  # killed during the 2nd epoch
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert metrics.read_text().count('\n') < TINY_PRESET['train']['epochs']
    assert 'outputs' not in json.loads((folder / STAGES_FILE).read_text())[f'train/{NAME}']  # started, not done
    changed = Path(shutil.copytree(folder, tmp_path / 'build_changed'))

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '[search] done before (same inputs): skipped' in result.stdout
    assert _stage_outputs(folder) == _stage_outputs(uninterrupted)
    assert [m['train_loss'] for m in read_metrics(metrics)] == \
        [m['train_loss'] for m in read_metrics(uninterrupted / 'train' / NAME / METRICS)]

    # the same interrupted build under a preset with another learning rate: training starts again, from scratch
    other = tmp_path / 'other.json'
    other.write_text(json.dumps(dict(TINY_PRESET, train=dict(TINY_PRESET['train'], lr=0.001, epochs=1))))
    _cli_build(other, changed)
    losses = [m['train_loss'] for m in read_metrics(changed / 'train' / NAME / METRICS)]
    assert len(losses) == 1 and losses[0] != read_metrics(metrics)[0]['train_loss']


LOAD_SCRIPT = '''
import sys, timm, torch, asvit_zoo
from safetensors.torch import load_file
model = timm.create_model(sys.argv[1], pretrained=True)
expected = load_file(sys.argv[2])
print(all(torch.equal(model.state_dict()[k], v) for k, v in expected.items()))
'''


def test_timm_loads_the_built_variants(uninterrupted: Path):
    weights = uninterrupted / 'registry' / f'{NAME}.fmnist' / 'model.safetensors'
    env = dict(os.environ, ASVIT_ZOO_REGISTRY=str(uninterrupted / 'registry'))
    result = subprocess.run([sys.executable, '-c', LOAD_SCRIPT, f'{NAME}.fmnist', str(weights)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == 'True'


def test_preset_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="preset 'nope' is neither a shipped preset"):
        load_preset('nope')
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps(dict(TINY_PRESET, scale=dict(TINY_PRESET['scale'], names=['a', 'b']))))
    with pytest.raises(ValueError, match=r"scale: 2 names \['a', 'b'\] for 1 budgets; give one distinct name"):
        load_preset(bad)
    bad.write_text(json.dumps(dict(TINY_PRESET, trian={})))
    with pytest.raises(ValueError, match=r"unknown preset field\(s\) \['trian'\]"):
        load_preset(bad)
    for change, message in [
        (dict(scale=dict(TINY_PRESET['scale'], names=['bad name!'])),
         r"scale: variant names must be model names .*\['bad name!'\]"),
        (dict(search=dict(TINY_PRESET['search'], stepz=3)), "search: .*unexpected keyword argument 'stepz'"),
        (dict(train=dict(TINY_PRESET['train'], epochs='1')), 'train: '),
        (dict(train=dict(TINY_PRESET['train'], pretrained=True)),
         r"train must not set \['pretrained'\] \(the build searches, trains, exports and scores its own variants\)"),
        (dict(scale=dict(TINY_PRESET['scale'], seed_genotype='8,2,3|4,1,2|4,1,4|4,1,6|32')),
         r"scale must not set \['seed_genotype'\]"),
        (dict(scale=dict(TINY_PRESET['scale'], names='asvit_a')),
         "scale: names must be a list of variant names, got 'asvit_a'"),
        (dict(scale=dict(TINY_PRESET['scale'], names=[1])), r'scale: names must be a list of variant names, got \[1\]'),
        (dict(evaluate={'ema': True}), r"evaluate must not set \['ema'\]"),
        (dict(evaluate={'tokenizer': 'junk'}), r'evaluate: tokenizer setting: expected "stride\[:dilation\]"'),
        (dict(evaluate={'data': 5}),
         "evaluate: data must be 'fashion-mnist', 'synthetic' or an ImageFolder root, got 5"),
        (dict(train=dict(TINY_PRESET['train'], data='synthetic', synthetic_classes=4)),
         r"evaluate: the exports would be scored on synthetic data drawn with the trainer's defaults, but train sets "
         r"\{'synthetic_classes': 4\}"),
        (dict(evaluate={'foo': 1}), r"unknown evaluate setting\(s\) \['foo'\]"),
        (dict(evaluate={'data': 'synthetic', 'data_root': 'fmnist'}),
         "evaluate: data_root is the folder of the fashion-mnist files; data 'synthetic' does not read it"),
        # the evaluation scores the training data, here an ImageFolder, which reads no data_root
        (dict(train=dict(TINY_PRESET['train'], data=str(tmp_path)), evaluate={'data_root': 'fmnist'}),
         "evaluate: data_root is the folder of the fashion-mnist files; data '.*' does not read it"),
        (dict(search=None), 'search must be an object of settings, got None'),
        (dict(tag=5), 'tag: tag must be a non-empty name without "." or "/", got 5'),
        (dict(tag='a/b'), 'tag: tag must be a non-empty name without "." or "/", got \'a/b\''),
        (dict(evaluate={'batch_size': 0}), 'evaluate: batch_size must be an integer >= 1, got 0'),
        (dict(evaluate={'device': 'tpu'}), "evaluate: device 'tpu' is not a torch device"),
        (dict(train=dict(TINY_PRESET['train'], device='tpu')), "train: device 'tpu' is not a torch device"),
        (dict(scale=dict(TINY_PRESET['scale'], budgets=2500000)),
         'scale: budgets must be a non-empty list of finite numbers > 0, got 2500000'),
        (dict(scale=dict(TINY_PRESET['scale'], budgets=[2000000])),  # below the seeds that start largest
         r'scale: budgets must be at least [\d,]+, the parameters of the first network of the scaling \(seed '
         r'8,2,6\|4,1,6\|4,1,6\|4,1,6\|64 at depths \[1, 1, 1, 1\] and width 32\), got 2,000,000'),
        (dict(scale=dict(TINY_PRESET['scale'], budgets=['2.5M'])),
         r"scale: budgets must be a non-empty list of finite numbers > 0, got \('2.5M',\)"),
    ]:
        bad.write_text(json.dumps(dict(TINY_PRESET, **change)))
        with pytest.raises(ValueError, match=message):
            load_preset(bad)
    bad.write_text('[1, 2]')
    with pytest.raises(ValueError, match='a preset is a JSON object of fields, got list'):
        load_preset(bad)
    bad.write_bytes(b'{"_comment": "r\xe9glages"}')
    with pytest.raises(ValueError, match="bad.json: not valid JSON: 'utf-8' codec can't decode byte 0xe9"):
        load_preset(bad)
    preset = load_preset('fmnist-cpu')
    with_root = dataclasses.replace(preset, train=dict(preset.train, data_root=str(tmp_path)),
                                    evaluate=dict(preset.evaluate, data_root=str(tmp_path)))
    on_folder = with_root.with_data(str(tmp_path))  # an ImageFolder: the Fashion-MNIST folder is dropped
    assert 'data_root' not in on_folder.train and 'data_root' not in on_folder.evaluate
    assert with_root.with_data('fashion-mnist').train['data_root'] == str(tmp_path)
    for data in ('', str(tmp_path / 'missing'), 'noise'):
        with pytest.raises(ValueError, match=f"data must be 'fashion-mnist' or an ImageFolder root .*got {data!r}"):
            preset.with_data(data)
    bad.write_text(json.dumps({k: v for k, v in TINY_PRESET.items() if k != 'scale'}))
    with pytest.raises(ValueError, match=r"bad.json: missing preset field\(s\) \['scale'\]"):
        load_preset(bad)
    (tmp_path / 'file').touch()
    with pytest.raises(ValueError, match='build folder .*file exists and is not a folder'):
        build(load_preset('fmnist-cpu'), tmp_path / 'file', log=lambda _: None)
    for name in ('fmnist-cpu', 'imagenet-paper'):
        assert load_preset(name).name == name


def test_each_preset_builds_into_its_own_default_folder(monkeypatch: pytest.MonkeyPatch):
    """Without --out, a build goes to builds/<preset name>: an ImageNet build never lands in the CPU build's folder."""
    from asvit_zoo.cli import main
    from asvit_zoo.commands import build as build_command

    folders: List[Path] = []
    monkeypatch.setattr(build_command, 'build', lambda preset, out, **kwargs: folders.append(Path(out)) or {'rows': []})
    for preset in ('fmnist-cpu', 'imagenet-paper'):
        assert main(['build', '--preset', preset, '--until', 'search']) == 0
    assert main(['build', '--preset', 'fmnist-cpu', '--out', 'elsewhere']) == 0
    assert folders == [Path('builds/fmnist-cpu'), Path('builds/imagenet-paper'), Path('elsewhere')]
