"""Shared-memory buffers for weights, gradients and ascent batches."""

from __future__ import annotations

import pytest
import torch

from lightning_asyncsam.ascent.buffers import BatchSlot, FlatTensors, read_batch


def test_flat_tensors_round_trip_mixed_dtypes() -> None:
    src = [torch.randn(2, 3), torch.arange(4), torch.randn(5, dtype=torch.float64)]
    flat = FlatTensors(src)
    assert all(v.is_shared() for v in flat.views())
    assert [v.dtype for v in flat.views()] == [t.dtype for t in src]
    new = [torch.randn(2, 3), torch.arange(4) * 2, torch.randn(5, dtype=torch.float64)]
    flat.copy_from(new)
    out = [torch.empty_like(t) for t in src]
    flat.copy_to(out)
    assert all(torch.equal(a, b) for a, b in zip(out, new))
    snapshot = flat.flat()
    flat.copy_from(src)
    flat.load_flat(snapshot)
    flat.copy_to(out)
    assert all(torch.equal(a, b) for a, b in zip(out, new))


def test_staged_transfers_carry_the_same_values() -> None:
    # The staging path (one gather on the main device, one transfer per dtype) is device-agnostic;
    # on a GPU it is what the `gpu` tests run, here it runs with the CPU as the "device".
    src = [torch.randn(2, 3), torch.arange(4), torch.randn(5)]
    flat = FlatTensors(src)
    flat.stage("cpu")
    new = [torch.randn(2, 3), torch.arange(4) * 3, torch.randn(5)]
    flat.copy_from(new)
    assert all(torch.equal(a, b) for a, b in zip(flat.views(), new))
    flat.views()[2].fill_(7.0)  # the worker writes the host buffer
    staged = flat.to_device()
    assert torch.equal(staged[2], torch.full((5,), 7.0)) and torch.equal(staged[1], new[1])
    assert staged[2].data_ptr() != flat.views()[2].data_ptr()  # a copy, not the shared buffer
    twin = FlatTensors(src)
    twin.stage("cpu", share_with=flat)
    assert twin.to_device()[0].data_ptr() == staged[0].data_ptr()  # the two gradient buffers share it
    assert torch.equal(twin.to_device()[0], src[0])
    flat.unpin()
    assert flat.to_device()[0].data_ptr() == flat.views()[0].data_ptr()


def test_load_flat_rejects_another_model() -> None:
    flat = FlatTensors([torch.zeros(3)])
    with pytest.raises(ValueError, match="does not match this model"):
        flat.load_flat([torch.zeros(4)])


def test_batch_slot_carries_any_batch_structure() -> None:
    slot = BatchSlot()
    batch = {"x": torch.randn(8, 3), "y": torch.arange(8), "meta": "fold-1", "scale": torch.tensor(2.0)}
    assert slot.write(batch, 3) is True
    got = read_batch(slot.layout, 3, torch.device("cpu"))
    assert torch.equal(got["x"], batch["x"][:3]) and torch.equal(got["y"], batch["y"][:3])
    assert got["meta"] == "fold-1" and torch.equal(got["scale"], batch["scale"])
    # same layout next step: nothing to resend, values updated in place
    batch2 = {"x": torch.randn(8, 3), "y": torch.arange(8) + 1, "meta": "fold-1", "scale": torch.tensor(2.0)}
    assert slot.write(batch2, 5) is False
    got = read_batch(slot.layout, 5, torch.device("cpu"))
    assert torch.equal(got["x"], batch2["x"][:5])


def test_batch_slot_relayouts_when_the_batch_changes() -> None:
    slot = BatchSlot()
    assert slot.write((torch.randn(4, 2), torch.arange(4)), 4)
    assert slot.write((torch.randn(8, 2), torch.arange(8)), 8)  # larger than before: more capacity
    assert not slot.write((torch.randn(3, 2), torch.arange(3)), 3)  # a short last batch fits
    assert slot.write((torch.randn(8, 5), torch.arange(8)), 2)  # new feature shape


@pytest.mark.parametrize("n", [32, 8], ids=["all", "first8"])
def test_a_short_last_batch_and_the_full_one_after_it_take_the_fast_path(n, monkeypatch) -> None:
    """An epoch's short last batch (drop_last=False) and the next epoch's full batch reuse the buffers and their
    layout without the slow path's walk, and the worker reads exactly their first rows."""
    slot = BatchSlot()
    full = (torch.randn(32, 3), torch.arange(32))
    assert slot.write(full, n) is True
    buffers = slot.layout[2]

    def no_walk(batch):  # noqa: ANN001, ANN202
        raise AssertionError("the slow path ran")

    monkeypatch.setattr(BatchSlot, "_flatten", staticmethod(no_walk))
    for size in (29, 32, 5, 32, 32):
        batch = (torch.randn(size, 3), torch.arange(size) + size)
        assert slot.write(batch, n) is False
        rows = min(n, size)
        assert (slot.size, slot.n) == (size, rows) and slot.layout[2] is buffers
        got = read_batch(slot.layout, rows, torch.device("cpu"))
        assert torch.equal(got[0], batch[0][:rows]) and torch.equal(got[1], batch[1][:rows])
    monkeypatch.undo()
    assert slot.write((torch.randn(40, 3), torch.arange(40)), n) is True  # more than the buffers hold: a new layout
    assert slot.write((torch.randn(8, 4), torch.arange(8)), n) is True  # another per-sample shape
    assert slot.write((torch.randn(8, 4), torch.arange(8.0)), n) is True  # another dtype


@pytest.mark.parametrize("features", [3, 1024], ids=["small", "large"])
def test_a_small_batch_is_copied_whole_where_the_worker_needs_its_first_rows(features, monkeypatch) -> None:
    """b' < b: a small batch goes into the slot whole (no slice per leaf, each a few microseconds mid-step), a large
    one as its first n rows; the worker reads the same first n rows either way, also across a short last batch."""
    from lightning_asyncsam.ascent import buffers

    slot = BatchSlot()
    assert slot.write((torch.randn(32, features), torch.arange(32)), 4) is True
    small = 32 * (features * 4 + 8) <= buffers.WHOLE_COPY_BYTES
    sliced: list[int] = []
    original = torch.Tensor.__getitem__

    def counting(self, index):  # noqa: ANN001, ANN202
        sliced.append(1)
        return original(self, index)

    # (batch size, whether the write may slice: a new size re-slices the slot's views once)
    for i, (size, resized) in enumerate(((32, False), (29, True), (32, True), (32, False))):
        # The slot's labels set to a value no batch holds first: rows past n that the write skipped
        # keep it (uninitialized memory, or an earlier case's identical labels, once matched by chance).
        slot.layout[2][1].fill_(-1)
        batch = (torch.randn(size, features), torch.arange(size) + 1000 * (i + 1) + 7)
        sliced.clear()
        monkeypatch.setattr(torch.Tensor, "__getitem__", counting)
        assert slot.write(batch, 4) is False
        monkeypatch.setattr(torch.Tensor, "__getitem__", original)
        assert (slot.size, slot.n) == (size, 4)
        got = read_batch(slot.layout, 4, torch.device("cpu"))
        assert torch.equal(got[0], batch[0][:4]) and torch.equal(got[1], batch[1][:4])
        assert torch.equal(slot.layout[2][1][:size], batch[1]) is small  # the rows past n written too, or not
        if not resized:
            assert (sliced == []) is small


def test_batch_size_needs_a_tensor() -> None:
    with pytest.raises(ValueError, match="no tensor with a batch dimension"):
        BatchSlot.batch_size(("a", 1))


def test_a_dict_of_tensors_takes_the_fast_path(monkeypatch) -> None:
    """After its first write, a dict batch shaped like the last one costs no pytree walk on either side."""
    from lightning_asyncsam.ascent import buffers
    from lightning_asyncsam.ascent.replica_io import BatchReader

    walks: list[int] = []
    flatten = buffers.tree_flatten
    monkeypatch.setattr(buffers, "tree_flatten", lambda tree, **kw: walks.append(1) or flatten(tree, **kw))
    slot, reader = BatchSlot(), BatchReader()
    assert slot.write({"image": torch.randn(8, 3), "label": torch.arange(8)}, 4) is True
    first = len(walks)
    for i in range(3):
        batch = {"image": torch.randn(8, 3), "label": torch.arange(8) + i}
        assert slot.write(batch, 4) is False
        got = reader.read(slot.layout, 4, torch.device("cpu"))
        assert list(got) == ["image", "label"]
        assert torch.equal(got["image"], batch["image"][:4]) and torch.equal(got["label"], batch["label"][:4])
    assert len(walks) == first  # no walk after the first write
    swapped = {"label": torch.arange(8), "image": torch.randn(8, 3)}  # the same keys in another order: a new layout
    assert slot.write(swapped, 4) is True
    got = reader.read(slot.layout, 4, torch.device("cpu"))
    assert list(got) == ["label", "image"] and torch.equal(got["image"], swapped["image"][:4])


@pytest.mark.parametrize("staged", [False, True], ids=["host", "staged"])
def test_the_rest_is_written_only_when_it_changed(staged) -> None:
    """Frozen parameters and buffers cross when their version counter or address moves, and every
    REST_REFRESH_STEPS writes in any case (a write through ``.data`` moves neither)."""
    from lightning_asyncsam.ascent.buffers import REST_REFRESH_STEPS

    trainable = torch.arange(5.0)  # two trainable tensors, laid out flat: 2 + 3
    frozen, buffer = torch.ones(4), torch.zeros(2)
    flat = FlatTensors([trainable[:2], trainable[2:], frozen, buffer])
    if staged:
        flat.stage("cpu")  # the GPU's path, on the CPU: through a staging copy, then to the host
    write = flat.flat_writer([trainable], count=2, rest=[frozen, buffer])
    host = flat.views()

    def rest_written() -> bool:
        host[2].fill_(-7.0)
        host[3].fill_(-7.0)
        trainable.add_(1.0)
        write()
        assert torch.equal(host[0], trainable[:2]) and torch.equal(host[1], trainable[2:])  # always
        return bool((host[2] != -7.0).all())

    assert rest_written()  # the first write
    assert not rest_written()  # nothing changed
    with torch.no_grad():
        frozen.mul_(2.0)  # in place: its version counter moves
    assert rest_written() and torch.equal(host[2], frozen)
    buffer.data = torch.full((2,), 3.0)  # rebound: its address moves
    assert rest_written() and torch.equal(host[3], buffer)
    frozen.data.add_(1.0)  # through .data: neither moves, until the periodic full write
    calls = 0
    while not rest_written():
        calls += 1
    assert 0 < calls < REST_REFRESH_STEPS and torch.equal(host[2], frozen)


def test_new_values_of_non_tensor_leaves_keep_the_layout(monkeypatch) -> None:
    """A batch's file names change every step: they travel alone (constants_changed), the buffers stay,
    and after the first write no pytree walk (a tuple of names is one leaf, kept whole)."""
    from lightning_asyncsam.ascent import buffers

    walks: list[int] = []
    flatten = buffers.tree_flatten
    monkeypatch.setattr(buffers, "tree_flatten", lambda tree, **kw: walks.append(1) or flatten(tree, **kw))
    slot = BatchSlot()
    x, y = torch.randn(8, 3), torch.arange(8)
    assert slot.write((x, y, [f"a{i}" for i in range(8)], torch.tensor(1.0)), 4) is True
    buffers = slot.layout[2]
    first = len(walks)
    assert slot.write((x, y, [f"b{i}" for i in range(8)], torch.tensor(1.0)), 4) is False and slot.constants_changed
    assert slot.layout[2] is buffers  # the same shared buffers: nothing to allocate or send again
    got = read_batch(slot.layout, 4, torch.device("cpu"))
    assert got[2] == [f"b{i}" for i in range(8)] and torch.equal(got[0], x[:4])
    assert slot.write((x, y, [f"b{i}" for i in range(8)], torch.tensor(1.0)), 4) is False
    assert not slot.constants_changed  # the same values: nothing to send
    assert slot.write((x, y, [f"b{i}" for i in range(8)], torch.tensor(2.0)), 4) is False and slot.constants_changed
    assert torch.equal(read_batch(slot.layout, 4, torch.device("cpu"))[3], torch.tensor(2.0))
    assert len(walks) == first  # the writes after the first took the fast path
    nested = (x, y, [["a"], ["b"]])  # deeper than one level: pytree's walk, and still carried
    assert slot.write(nested, 4) is True
    assert read_batch(slot.layout, 4, torch.device("cpu"))[2] == [["a"], ["b"]]
