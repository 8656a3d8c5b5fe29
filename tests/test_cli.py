"""The ``asvit`` command line: the summary table of every registered variant."""
from asvit_zoo.cli import main
from asvit_zoo.registry import load_registry


def test_summary_lists_every_variant_with_counts(capsys):
    assert main(['summary', '--image-size', '64']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split(' | ')[0].strip() == 'variant'
    rows = {line.split(' | ')[0].strip(): [c.strip() for c in line.split(' | ')] for line in out[2:]}
    for card in load_registry():
        name, genotype, params, gmacs, _ = rows[card.name]
        assert genotype == str(card.genotype)
        assert float(params) > 0 and float(gmacs) > 0
    assert rows['asvit_large_paper'][2] == '87.58'
