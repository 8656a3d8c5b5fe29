"""The ``asvit`` command line: the variant tables and model cards, and every option's help."""
import argparse
import re
import tomllib
from pathlib import Path

import pytest
import timm
import torch

from asvit_zoo.asvit import registered_card, registered_cards
from asvit_zoo.cli import build_parser, main
from asvit_zoo.registry import load_registry
from conftest import options_without_help


def _table(text: str) -> dict:
    """The rows of a markdown table, split as a markdown renderer does: at every pipe not escaped."""
    lines = [line for line in text.splitlines() if line.startswith('| ')]
    split = lambda line: [c.strip() for c in re.split(r'(?<!\\)\|', line.strip()[1:-1])]  # noqa: E731
    header, *rows = map(split, lines)
    assert all(len(cells) == len(header) for cells in rows), rows
    return {cells[0]: dict(zip(header, cells)) for cells in rows}


@pytest.mark.parametrize('command', ['list', 'summary'])
def test_tables_list_every_variant_with_counts(capsys, command):
    assert main([command, '--image-size', '64']) == 0
    rows = _table(capsys.readouterr().out)
    assert set(rows) == {card.name for card in registered_cards()}  # other tests may have registered more
    for card in map(registered_card, (shipped.name for shipped in load_registry())):
        row = rows[card.name]
        assert row['genotype'] == '`' + str(card.genotype).replace('|', '\\|') + '`'
        assert float(row['params (M)']) > 0 and float(row['GMACs @64']) > 0
        with_weights = [tag for tag in card.tags() if card.weights_file(tag) is not None]
        assert row['weights'] == (f"yes ({', '.join(with_weights)})" if with_weights else 'no')
        assert ('forward (s)' in row) == (command == 'summary')
    assert rows['asvit_large_paper']['params (M)'] == '87.58'
    assert rows['asvit_tiny']['weights'] == 'yes (fmnist)'
    assert rows['asvit_tiny']['hub id'] == 'asvit-zoo/asvit_tiny-fmnist'
    assert main(['list']) == 0
    assert _table(capsys.readouterr().out)['asvit_large_paper']['GMACs @224'] == '22.36'


def test_show_prints_the_card_and_rejects_unknown_names(capsys):
    assert main(['show', 'asvit_small']) == 0
    out = capsys.readouterr().out
    assert out.startswith('---\nlibrary_name: timm') and '# asvit_small' in out and 'asvit scale --seed' in out
    assert main(['show', 'asvit_tiny.fmnist']) == 0  # a tagged folder's card
    assert '# asvit_tiny.fmnist' in capsys.readouterr().out
    for name in ('asvit_huge', 'asvit_small.nope'):
        assert main(['show', name]) == 2
        err = capsys.readouterr().err
        assert f"unknown variant '{name}'" in err and 'asvit_small' in err and 'asvit_tiny.fmnist' in err


@pytest.mark.parametrize('command', ['list', 'summary'])
@pytest.mark.parametrize('size', ['0', '-3'])
def test_tables_reject_an_image_size_below_one(capsys, command, size):
    assert main([command, '--image-size', size]) == 2
    assert f'image_size must be a positive integer (pixels), got {size}' in capsys.readouterr().err


def test_every_option_of_every_command_has_a_help_text():
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(commands.choices) >= 10
    assert {name: options_without_help(parser) for name, parser in commands.choices.items()
            if options_without_help(parser)} == {}


def test_version_is_the_projects_with_timms_and_torchs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--version'])
    assert exit_info.value.code == 0
    project = tomllib.loads((Path(__file__).parents[1] / 'pyproject.toml').read_text())['project']
    assert capsys.readouterr().out.strip() == (f"asvit-zoo {project['version']} (timm {timm.__version__}, "
                                               f"torch {torch.__version__})")
