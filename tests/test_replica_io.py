"""The worker's data path (ascent/replica_io.py): the flat path gives exactly what the per-tensor path gives."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lightning_asyncsam.ascent.buffers import BatchSlot, FlatTensors
from lightning_asyncsam.ascent.flat_params import FlatParameters
from lightning_asyncsam.ascent.replica_io import BatchReader, ReplicaIO


def _net(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2)).to(dtype)


def _replica_of(net: nn.Module) -> nn.Module:
    """A copy through torch.save, as the worker gets it (the trainer's parameters in its flat buffers)."""
    flat = FlatParameters(list(net.parameters()))
    assert flat.active
    buf = io.BytesIO()
    torch.save(net, buf)
    flat.release()
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=False)


def _step(replica: nn.Module, rio: ReplicaIO, weights: FlatTensors, out: FlatTensors, x: torch.Tensor,
          rho: float | None) -> float:
    rio.load(weights)
    rio.zero_grads()
    replica(x).square().sum().backward()
    return rio.deliver(out, rho)


_CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                       reason="needs a CUDA device")])


def _transpose_layout(p: torch.Tensor) -> None:
    """Store the 2-D ``p`` column-major: in no layout that a flat buffer holds, so the per-tensor path."""
    p.data = p.data.t().contiguous().t()


@pytest.mark.parametrize("device", ["cpu", _CUDA])  # a CUDA replica: ascent_device="cuda:1", host buffers
@pytest.mark.parametrize("rho", [None, 0.3])
def test_flat_paths_match_the_per_tensor_path(rho: float | None, device: str) -> None:
    """One flat buffer per dtype, with the replica's weights in the trainer's layout or in channels_last."""
    net = _net()
    params = list(net.parameters())
    weights = FlatTensors([p.detach() for p in params])
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64, device=device)
    results = {}
    for layout in ("per_tensor", "flat", "channels_last"):
        replica = _replica_of(net).to(device)
        trainable = list(replica.parameters())
        if layout == "per_tensor":
            _transpose_layout(trainable[2])  # the linear layer's weight
        elif layout == "channels_last":
            trainable[0].data = trainable[0].data.to(memory_format=torch.channels_last)
        out = FlatTensors(params)
        rio = ReplicaIO(trainable, trainable, weights, out)
        assert (rio.flat, rio.permuted) == {"per_tensor": (False, False), "flat": (True, False),
                                            "channels_last": (True, True)}[layout]
        if layout == "channels_last":  # the segment keeps the layout, and so does its gradient
            assert trainable[0].is_contiguous(memory_format=torch.channels_last) and not trainable[0].is_contiguous()
        norms = []
        for step in range(3):  # the weights change between steps: each step reads them afresh
            weights.copy_from([p.detach() + 0.1 * step for p in params])
            norms.append(_step(replica, rio, weights, out, x, rho))
        if layout == "channels_last":
            assert trainable[0].grad.stride() == trainable[0].stride()
        results[layout] = (norms, [v.clone() for v in out.views()])
    ref_norms, ref_out = results.pop("per_tensor")
    # On a GPU the two layouts may take different convolution kernels, which reduce in other orders.
    rtol, atol = (1e-12, 1e-15) if device == "cpu" else (1e-10, 1e-12)
    for norms, got in results.values():
        assert all(v.device.type == "cpu" for v in got)  # delivered into the host buffers
        assert norms == pytest.approx(ref_norms, rel=rtol)
        assert all(torch.allclose(a, b, rtol=rtol, atol=atol) for a, b in zip(got, ref_out))
        if rho is not None:
            total = torch.linalg.vector_norm(torch.cat([v.flatten() for v in got])).item()
            assert total == pytest.approx(rho, rel=1e-9)  # e = rho g / ||g||


def test_the_gradient_is_the_replicas_own_at_the_published_weights() -> None:
    net = _net()
    replica = _replica_of(net)
    trainable = list(replica.parameters())
    weights, out = FlatTensors([p.detach() * 2 for p in net.parameters()]), FlatTensors(list(net.parameters()))
    rio = ReplicaIO(trainable, trainable, weights, out)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    norm = _step(replica, rio, weights, out, x, rho=None)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2)
    net(x).square().sum().backward()
    want = [p.grad for p in net.parameters()]
    assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(out.views(), want))
    assert norm == pytest.approx(torch.linalg.vector_norm(torch.cat([g.flatten() for g in want])).item(), rel=1e-12)


def test_an_unused_parameter_gets_a_zero_gradient_and_a_non_finite_one_is_not_scaled() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)).double()
    replica = _replica_of(net)
    trainable = list(replica.parameters())
    weights, out = FlatTensors([p.detach() for p in net.parameters()]), FlatTensors(list(net.parameters()))
    rio = ReplicaIO(trainable, trainable, weights, out)
    rio.load(weights)
    rio.zero_grads()
    replica[0](torch.ones(1, 3, dtype=torch.float64)).sum().backward()  # the second layer is unused
    rio.deliver(out, rho=0.5)
    assert out.views()[2].abs().sum() == 0 and out.views()[3].abs().sum() == 0
    rio.zero_grads()
    (replica[0](torch.ones(1, 3, dtype=torch.float64)).sum() * float("nan")).backward()
    assert rio.deliver(out, rho=0.5) != rio.deliver(out, rho=0.5)  # NaN, delivered unscaled for the trainer to skip


@pytest.mark.parametrize("batch", [
    torch.arange(12.0).view(6, 2),
    (torch.arange(12.0).view(6, 2), torch.arange(6)),
    [torch.arange(12.0).view(6, 2), torch.arange(6)],
    {"x": torch.arange(12.0).view(6, 2), "y": torch.arange(6), "tag": "digits"},
])
def test_batch_reader_rebuilds_the_first_n_samples(batch: object) -> None:
    slot, reader = BatchSlot(), BatchReader()
    slot.write(batch, n=4)
    got = reader.read(slot.layout, 4, torch.device("cpu"))
    assert type(got) is type(batch)
    leaves = got if isinstance(got, (tuple, list)) else [got] if isinstance(got, torch.Tensor) else list(got.values())
    assert torch.equal(leaves[0], torch.arange(8.0).view(4, 2))
    # The next batch of the same shape lands in the same buffers: the cached views see it.
    slot.write(batch if isinstance(batch, torch.Tensor) else type(batch)(batch), n=4)
    again = reader.read(slot.layout, 4, torch.device("cpu"))
    assert type(again) is type(batch) and (again is not got or isinstance(got, torch.Tensor))


def test_batch_reader_follows_a_new_layout_and_a_new_n() -> None:
    slot, reader = BatchSlot(), BatchReader()
    slot.write((torch.arange(6.0), torch.arange(6)), n=4)
    assert reader.read(slot.layout, 4, torch.device("cpu"))[0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert reader.read(slot.layout, 2, torch.device("cpu"))[0].tolist() == [0.0, 1.0]
    assert slot.write((torch.arange(10.0).view(5, 2), torch.arange(5)), n=3)  # a new shape: a new layout
    assert reader.read(slot.layout, 3, torch.device("cpu"))[0].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


def _flat_replica() -> tuple[nn.Module, ReplicaIO, FlatTensors, FlatTensors, torch.Tensor, float]:
    """A replica on the flat path, its buffers, a batch, and ||g|| of one plain step (the reference)."""
    net = _net()
    weights, x = FlatTensors([p.detach() for p in net.parameters()]), torch.randn(2, 2, 4, 4, dtype=torch.float64)
    replica = _replica_of(net)
    trainable = list(replica.parameters())
    out = FlatTensors(list(net.parameters()))
    rio = ReplicaIO(trainable, trainable, weights, out)
    return replica, rio, weights, out, x, _step(replica, rio, weights, out, x, rho=None)


def test_a_zero_grad_in_the_replicas_own_code_does_not_lose_the_gradient() -> None:
    """The module's ascent code may set its gradients to None: they are still delivered, then re-attached."""
    replica, rio, weights, out, x, want = _flat_replica()
    want_views = [v.clone() for v in out.views()]
    for _ in range(2):
        rio.load(weights)
        rio.zero_grads()
        replica.zero_grad()  # between zero_grads and backward: autograd allocates fresh gradients
        replica(x).square().sum().backward()
        assert rio.deliver(out, rho=None) == pytest.approx(want, rel=1e-12)
        assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(out.views(), want_views))
    assert rio.flat and _step(replica, rio, weights, out, x, rho=None) == pytest.approx(want, rel=1e-12)


def test_parameters_moved_by_the_replicas_code_fall_back_to_the_per_tensor_path() -> None:
    replica, rio, weights, out, x, want = _flat_replica()
    for p in replica.parameters():  # e.g. a module that re-creates its weights' storage
        p.data = p.data.clone()
    assert _step(replica, rio, weights, out, x, rho=None) == pytest.approx(want, rel=1e-12)
    assert not rio.flat


def test_the_replica_copies_the_rest_only_when_it_was_rewritten_or_it_changed_its_own() -> None:
    """Frozen parameters and buffers move into the replica when the trainer's writer rewrote them
    (``FlatTensors.rest_version``), or when the replica's own code changed its copies."""
    net = _net()
    head = list(net[2].parameters())
    for p in net[0].parameters():
        p.requires_grad_(False)  # a frozen first layer: the rest
    rest = list(net[0].parameters())
    weights = FlatTensors([p.detach() for p in head + rest])
    head_flat = torch.cat([p.detach().reshape(-1) for p in head])
    write = weights.flat_writer([head_flat], count=2, rest=rest)
    replica = _replica_of(net)
    mirror = list(replica[2].parameters()) + list(replica[0].parameters())
    rio = ReplicaIO(mirror, mirror[:2], weights, FlatTensors([p.detach() for p in head]))
    frozen = mirror[2]  # the replica's copy of net[0].weight

    write()
    rio.load(weights)
    assert torch.equal(frozen, rest[0])
    weights.views()[2].add_(1.0)  # the shared copy changed behind the writer's back: not read again
    write()
    rio.load(weights)
    assert torch.equal(frozen, rest[0])
    with torch.no_grad():
        rest[0].mul_(2.0)  # the trainer's frozen weight changed: rewritten, and read
    write()
    rio.load(weights)
    assert torch.equal(frozen, rest[0])
    with torch.no_grad():
        frozen.zero_()  # the replica's own code changed its copy: read again
    rio.load(weights)
    assert torch.equal(frozen, rest[0])
