"""Variant tables: rows counted on the meta device or timed, and a forward pass that goes wrong is named."""
import dataclasses
import math

import pytest
import timm

from asvit_zoo import summary
from asvit_zoo.asvit import registered_card
from asvit_zoo.summary import format_table, list_variants


def test_a_table_with_some_rows_timed_marks_the_others():
    first, second = list_variants(32)[:2]
    table = format_table([dataclasses.replace(first, forward_seconds=0.125), second], 32)
    header, _, timed, untimed = table.splitlines()[:4]
    assert header.rstrip(' |').endswith('forward (s)')
    assert timed.rstrip(' |').endswith('0.12') and untimed.rstrip(' |').endswith('-')
    assert 'forward (s)' not in format_table([first, second], 32)


def test_rows_count_the_macs_at_the_tables_image_size():
    from asvit_zoo.cost import count_macs, param_count

    row = list_variants(32)[0]
    model = timm.create_model(row.name)
    assert row.params == param_count(model)
    assert row.gmacs == pytest.approx(count_macs(model, (3, 32, 32)) / 1e9, rel=1e-9)
    assert row.gmacs < list_variants(64)[0].gmacs


@pytest.mark.parametrize('damage, message', [
    (lambda logits: logits[:, :5], r'asvit_seed: forward pass gave logits of shape \(1, 5\), expected \(1, 1000\)$'),
    (lambda logits: logits * math.nan, 'asvit_seed: forward pass gave non-finite logits$'),
])
def test_summary_names_what_is_wrong_with_a_forward_pass(monkeypatch, damage, message):
    model = timm.create_model('asvit_seed')
    model.register_forward_hook(lambda module, args, logits: damage(logits))
    monkeypatch.setattr(summary, 'registered_cards', lambda: [registered_card('asvit_seed')])
    monkeypatch.setattr(summary.timm, 'create_model', lambda name: model)
    with pytest.raises(RuntimeError, match=message):
        summary.summarize_variants(32)


def test_a_variant_without_a_classifier_is_summarized(monkeypatch):
    model = timm.create_model('asvit_seed', num_classes=0)
    monkeypatch.setattr(summary, 'registered_cards', lambda: [registered_card('asvit_seed')])
    monkeypatch.setattr(summary.timm, 'create_model', lambda name: model)
    row, = summary.summarize_variants(32)
    assert row.name == 'asvit_seed' and row.forward_seconds > 0
