"""The replica's memory format (ascent/memory_format.py) and the flat buffers that hold channels_last weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_asyncsam.ascent.flat_params import FlatParameters
from lightning_asyncsam.ascent.memory_format import replica_format, set_channels_last

CPU, GPU = torch.device("cpu"), torch.device("cuda", 1)


def _conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8, 2))


@pytest.mark.parametrize(("choice", "device", "module", "want"), [
    ("auto", CPU, "conv", "channels_last_else_preserve"),
    ("auto", CPU, "mlp", "preserve"),          # no 4-D parameter: nothing to lay out
    ("auto", GPU, "conv", "preserve"),         # nothing measured on a GPU
    ("preserve", CPU, "conv", "preserve"),
    ("channels_last", GPU, "conv", "channels_last"),
    ("channels_last", CPU, "mlp", "channels_last"),
])
def test_what_each_choice_means_for_a_replica(choice: str, device: torch.device, module: str, want: str) -> None:
    net = _conv() if module == "conv" else nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert replica_format(choice, device, net) == want  # type: ignore[arg-type]


def test_channels_last_and_back_keep_the_parameters_and_their_values() -> None:
    net = _conv()
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    set_channels_last(net, True)
    assert list(net.parameters()) == params  # the same objects: what holds them keeps working
    # The one-input-channel weight is contiguous in both layouts: its strides say channels_last.
    assert net[0].weight.stride() == (9, 1, 3, 1) and not net[1].weight.is_contiguous()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in params if p.dim() == 4)
    set_channels_last(net, False)
    assert net[0].weight.stride() == (9, 9, 3, 1) and all(p.is_contiguous() for p in params)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_dense_flat_buffers_hold_channels_last_weights_in_their_own_order() -> None:
    net = _conv()
    set_channels_last(net, True)
    params = list(net.parameters())
    values = [p.detach().clone() for p in params]
    strides = [p.stride() for p in params]
    assert not FlatParameters(params).active  # the trainer's buffers take contiguous parameters alone
    flat = FlatParameters(params, dense=True)
    assert flat.active and flat.permuted
    assert [p.stride() for p in params] == strides  # the layout survives the move
    assert all(torch.equal(p, v) for p, v in zip(params, values))
    flat.flats[0].mul_(2.0)  # one pass over the buffer reaches every parameter
    assert all(torch.equal(p, 2 * v) for p, v in zip(params, values))
    flat.release()
    assert [p.stride() for p in params] == strides and all(torch.equal(p, 2 * v) for p, v in zip(params, values))

