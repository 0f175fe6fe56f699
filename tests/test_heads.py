"""The head checks every path-patching helper applies, on a stand-in for a model's config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ioi_anomalies.heads import check_receivers, check_senders, heads_by_layer

MODEL = SimpleNamespace(cfg=SimpleNamespace(n_layers=3, n_heads=4))


def test_receivers_become_plain_int_pairs():
    got = check_receivers(MODEL, [(torch.tensor(2), 1), [0, 3]], "v")
    assert got == [(2, 1), (0, 3)] and all(type(x) is int for head in got for x in head)


@pytest.mark.parametrize(
    "receivers,receiver_input,message",
    [
        ([(1, 0)], "z", "receiver_input must be 'q', 'k' or 'v'"),
        ([], "q", "at least one receiver"),
        ([(3, 0)], "k", "receiver 3.0 is not a head of this 3x4 model"),
        ([(0, 4)], "k", "receiver 0.4 is not a head"),
        ([(-1, 0)], "k", "receiver -1.0 is not a head"),
    ],
)
def test_bad_receivers_say_what_is_wrong(receivers, receiver_input, message):
    with pytest.raises(ValueError, match=message):
        check_receivers(MODEL, receivers, receiver_input)


def test_senders_may_be_none_but_must_be_heads_of_the_model():
    assert check_senders(MODEL, []) == []
    assert check_senders(MODEL, iter([(2, 3), (0, 0)])) == [(2, 3), (0, 0)]
    with pytest.raises(ValueError, match="sender 1.4 is not a head"):
        check_senders(MODEL, [(0, 0), (1, 4)])


def test_heads_by_layer_sorts_layers_and_keeps_the_order_of_heads():
    assert heads_by_layer([(2, 3), (0, 1), (2, 0), (0, 0)]) == {0: [1, 0], 2: [3, 0]}
    assert list(heads_by_layer([(2, 3), (0, 1)])) == [0, 2]
    assert heads_by_layer([]) == {}
