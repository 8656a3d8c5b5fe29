"""The benchmark scripts stay runnable: each builds its options, and the GPU script's search slice runs on CPU.

The benchmarks themselves are measured by hand (their docstrings say how), never timed here."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, options_without_help, parser_of

SCRIPTS = sorted((REPO_ROOT / 'benchmarks').glob('bench_*.py'))
BENCH_GPU = REPO_ROOT / 'benchmarks' / 'bench_gpu.py'


def refusal(script: Path, args: list, capsys: pytest.CaptureFixture) -> str:
    """The error output of a benchmark script that refuses ``args`` with argparse's exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script))['main'](args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_every_benchmark_is_found():
    assert [p.stem for p in SCRIPTS] == ['bench_detection', 'bench_gpu', 'bench_measures', 'bench_model',
                                         'bench_retokenization']


@pytest.mark.parametrize('path', SCRIPTS, ids=lambda p: p.stem)
def test_every_benchmark_option_has_a_help_text(path: Path, monkeypatch: pytest.MonkeyPatch):
    parser = parser_of(runpy.run_path(str(path))['main'], monkeypatch)
    assert parser._actions[1:] and options_without_help(parser) == []


def test_gpu_benchmark_refuses_a_single_search_step(capsys: pytest.CaptureFixture):
    assert '--search-steps must be at least 2' in refusal(BENCH_GPU, ['--device', 'cpu', '--search-steps', '1'], capsys)


@pytest.mark.parametrize('args,message', [
    (['--train-steps', '0'], '--train-steps must be at least 1, got 0'),
    (['--batch-size', '0'], '--batch-size must be at least 1, got 0'),
    (['--repeat', '0'], 'repeat must be an integer >= 1, got 0'),
    (['--device', 'gpu'], "device 'gpu' is not a torch device"),
    (['--model', 'resnet50'], "--model must be a registered As-ViT variant (asvit list) or a scaled genotype string"),
])
def test_gpu_benchmark_checks_every_part_before_running_any(args, message, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture):
    """A bad train option no longer fails after the search slice has run (and its timing was lost)."""
    assert message in refusal(BENCH_GPU, ['--device', 'cpu', '--output', str(tmp_path / 'out'), *args], capsys)
    assert not (tmp_path / 'out').exists()


def test_gpu_benchmark_search_slice_runs_on_cpu(tmp_path: Path):
    assert runpy.run_path(str(BENCH_GPU))['main'](['--device', 'cpu', '--output', str(tmp_path), '--parts', 'search',
                                                  '--search-steps', '2', '--search-size', '32', '--repeat', '1',
                                                  '--ntk-batch', '2']) == 0
    search = json.loads((tmp_path / 'results.json').read_text())['search']
    assert search['steps'] == 2 and search['config']['image_size'] == 32
    assert search['median_step_s'] > 0 and set(search['median_measure_s']) == {'ntk', 'exp'}


BENCH_MEASURES = REPO_ROOT / 'benchmarks' / 'bench_measures.py'


def test_measures_benchmark_compares_each_method_with_a_forward_of_its_own_batch(capsys: pytest.CaptureFixture):
    runpy.run_path(str(BENCH_MEASURES))['main'](['--sizes', '16', '--repeats', '1', '--coords', '2',
                                                 '--ntk-batch', '2'])
    rows = [line.split(' | ')[1:5] for line in capsys.readouterr().out.splitlines() if line.startswith('| 16 |')]
    assert [row[:2] for row in rows] == [
        ['forward, 10-point batch', 'plain forward (model as is)'],
        ['forward, 10-point batch', 'curve network (LayerNorms removed, SDPA in every window)'],
        ['length distortion', 'forward-mode jvp (ours)'], ['length distortion', 'per-coordinate backward (authors)'],
        ['forward, NTK batch 2', 'plain forward (model as is)'], ['NTK cond, batch 2', 'one batched backward (ours)'],
        ['NTK cond, batch 2', 'per-sample backward (authors)']]
    assert rows[2][3].endswith('x plain forward') and rows[5][3].endswith('x plain forward of the batch')


@pytest.mark.parametrize('args,message', [
    (['--sizes', '64,x'], "--sizes must be comma-separated image sizes, got '64,x'"),
    (['--sizes', '0'], '--sizes must be at least 1, got 0'),
    (['--repeats', '0'], '--repeats must be at least 1, got 0'),
    (['--coords', '0'], '--coords must be at least 1, got 0'),
    (['--ntk-batch', '1'], '--ntk-batch must be at least 2, got 1'),
    (['--threads', '0'], '--threads must be at least 1, got 0'),
])
def test_measures_benchmark_refuses_bad_options(args, message, capsys: pytest.CaptureFixture):
    assert message in refusal(BENCH_MEASURES, args, capsys)


BENCH_RETOKENIZATION = REPO_ROOT / 'benchmarks' / 'bench_retokenization.py'


def test_retokenization_benchmark_refuses_runs_made_with_other_settings(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture):
    """An output folder that holds runs of other settings is refused before any training: their epochs would be
    skipped as done and reported under the new settings."""
    from asvit_zoo.retokenization import SCHEDULES
    from asvit_zoo.train import load_config

    earlier = load_config(REPO_ROOT / 'recipes' / 'fmnist_tiny.json', epochs=1, retokenization=SCHEDULES['short'])
    (tmp_path / 'progressive').mkdir()
    (tmp_path / 'progressive' / 'config.json').write_text(json.dumps(earlier.to_dict()))
    for args, message in ((['--epochs', '1', '--schedule', 'paper'], f'{tmp_path / "progressive"} holds a run with '
                           f"other settings (retokenization: saved '{SCHEDULES['short']}', given '0.3:16:2,"),
                          (['--epochs', '2'], 'other settings (epochs: saved 1, given 2)'),
                          (['--schedule', 'bogus'], "or \"fraction:stride[:dilation],...\", got 'bogus'"),
                          (['--epochs', '1', '--train-subset', '256'],  # 2 steps: none for the second phase
                           f"phase 2 ({SCHEDULES['short'].split(',')[-1]}) gets none of the 2 training steps"),
                          (['--epochs', '0'], 'epochs must be an integer >= 1, got 0'),
                          (['--threads', '0'], '--threads must be at least 1, got 0')):
        assert message in refusal(BENCH_RETOKENIZATION, ['--output', str(tmp_path), *args], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['progressive']  # nothing trained or written


BENCH_DETECTION = REPO_ROOT / 'benchmarks' / 'bench_detection.py'


@pytest.mark.parametrize('args,message', [
    (['speed', '--rounds', '0'], '--rounds must be at least 1, got 0'),
    (['train', '--max-iters', '1'], '--max-iters must be at least 2, got 1'),
    (['train', '--config', 'nope'], "config 'nope' is neither a file nor a shipped config"),
    (['speed', '--archs', 'asvit_nope', '--image-size', '64', '64'], "AsViT arch must be a registered As-ViT variant"),
])
def test_detection_benchmark_refuses_bad_options(args, message, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert message in refusal(BENCH_DETECTION, [*args, '--work-dir', str(tmp_path / 'out')], capsys)
    assert not (tmp_path / 'out').exists()


BENCH_MODEL = REPO_ROOT / 'benchmarks' / 'bench_model.py'


def test_model_benchmark_times_a_compiled_copy_beside_the_eager_paths(capsys: pytest.CaptureFixture):
    runpy.run_path(str(BENCH_MODEL))['main'](['--model', 'asvit_seed', '--reference', 'none', '--batch', '2',
                                              '--image-size', '32', '--iters', '1', '--compile', 'eager'])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| asvit_seed |')]
    assert len(rows) == 4
    compiled = [row for row in rows if 'torch.compile (eager)' in row]
    assert len(compiled) == 1 and compiled[0].startswith('| asvit_seed | default (plain in windows <= 64 tokens), ')
    assert len({row.split('|')[3] for row in rows}) == 1  # the copy has the same parameters


@pytest.mark.parametrize('args,message', [
    (['--compile', 'fast'], "--compile must be a torch.compile backend (cudagraphs, "),
    (['--compile', 'inductor', '--warmup', '0'], '--compile needs --warmup >= 1: the first pass compiles'),
    (['--reference', 'resnet5'], "--reference: unknown timm model 'resnet5'"),
    (['--model', 'asvit_tiny', '--model', 'asvit_huge'], "--model: unknown timm model 'asvit_huge'"),
])
def test_model_benchmark_refuses_what_it_cannot_time(args: list, message: str, capsys: pytest.CaptureFixture):
    assert message in refusal(BENCH_MODEL, args, capsys)


def test_model_benchmark_builds_a_reference_of_any_input_size_handling(capsys: pytest.CaptureFixture):
    # resnet takes no img_size (any input size); a ViT is built for the benchmark's size
    for reference in ('resnet18', 'vit_tiny_patch16_224'):
        runpy.run_path(str(BENCH_MODEL))['main'](['--model', 'asvit_seed', '--reference', reference, '--batch', '1',
                                                  '--image-size', '32', '--iters', '1', '--warmup', '0'])
        assert f'| {reference} | ' in capsys.readouterr().out


def test_gpu_benchmark_training_part_runs_compiled_on_cpu(tmp_path: Path):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert runpy.run_path(str(BENCH_GPU))['main'](['--device', 'cpu', '--output', str(tmp_path), '--parts', 'train',
                                                  '--model', 'asvit_seed', '--train-size', '32', '--train-steps', '1',
                                                  '--batch-size', '2', '--amp', 'none', '--compile', 'eager']) == 0
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['compile'] == 'eager'
    assert [row['tokenizer'] for row in results['train']] == ['4:1', '8:2', '16:2']
    assert all(row['images_per_s'] > 0 for row in results['train'])
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] == 3  # one per tokenizer setting
