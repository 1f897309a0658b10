"""The trainer's per-step path (issue 11): no callback dispatch per batch, the backup is the published w_t,
the worker delivers e itself, and the step hand-shake goes through shared memory and semaphores."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.profilers import PassThroughProfiler
from torch.nn import functional as F

from lightning_asyncsam import AsyncSAMCallback, AsyncSAMStrategy, LookSAMStrategy
from lightning_asyncsam.ascent.mailbox import Mailbox
from lightning_asyncsam.ascent.worker import AscentWorker
from lightning_asyncsam.batch_free import PER_BATCH_HOOKS, BatchFreeCallback
from lightning_asyncsam.strategies.state import RuleStateCallback
from tiny import ManualClassifier, TinyClassifier, in_float64, loader, make_data, trainer


class ActionRecorder(PassThroughProfiler):
    """Records the name of every action Lightning profiles: each callback hook call is one."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[str] = []

    def start(self, action_name: str) -> None:
        self.actions.append(action_name)


@pytest.mark.parametrize("make", [lambda: AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), LookSAMStrategy],
                         ids=["asyncsam", "looksam"])
def test_lightning_calls_the_strategy_callbacks_on_no_batch(make) -> None:
    profiler = ActionRecorder()
    t = L.Trainer(strategy=make(), accelerator="cpu", devices=1, max_epochs=2,
                  logger=False, enable_progress_bar=False, enable_checkpointing=False,
                  enable_model_summary=False, profiler=profiler)
    data = make_data(n=32, dtype=torch.float32)
    t.fit(TinyClassifier(), loader(data, 8))
    ours = [c.state_key for c in t.callbacks if isinstance(c, BatchFreeCallback)]
    assert ours and set(ours) <= {"AsyncSAMCallback", "RuleStateCallback"}, ours
    called = {a.split(".", 1)[1] for a in profiler.actions if any(a.startswith(f"[Callback]{k}.") for k in ours)}
    assert "on_train_start" in called and "setup" in called  # the fit's hooks still reach them
    assert not called & set(PER_BATCH_HOOKS), called & set(PER_BATCH_HOOKS)


def test_a_user_callback_keeps_its_batch_hooks() -> None:
    seen: list[int] = []

    class Counting(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append(batch_idx)

    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=1, callbacks=[Counting()])
    t.fit(TinyClassifier(), loader(make_data(n=32, dtype=torch.float32), 8))
    assert seen == [0, 1, 2, 3]
    assert AsyncSAMCallback in {type(c) for c in t.callbacks}
    assert RuleStateCallback not in {type(c) for c in t.callbacks}  # AsyncSAM's rule keeps no state of its own


@pytest.mark.parametrize("twins", [True, False], ids=["swap", "copy"])
def test_asyncsam_perturbs_and_restores_through_flat_buffers(twins: bool, monkeypatch) -> None:
    """Every perturbed micro-batch: the parameters are w_t + e, and the update sees w_t exactly, one buffer per dtype.

    On the CPU the buffers have twins: w_t + e is written into the twins, the parameters take their
    memory (a storage swap) and give it back after the backward, so that w_t itself is never
    written (and the worker reads it there: live weights, nothing published). Without twins (a
    torch without the swap), w_t comes back from the published copy.
    """
    from lightning_asyncsam.ascent import flat_params

    if not twins:
        monkeypatch.setattr(flat_params, "SWAP_DATA", None)
    checks: list[bool] = []
    w_t: list[torch.Tensor] = []  # the flat buffers at the first micro-batch of the step

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx % 2 == 0:
                w_t[:] = [f.clone() for f in trainer.strategy._flat.flats]

        def on_before_backward(self, trainer, pl_module, loss) -> None:
            s = trainer.strategy
            if s._perturbed:  # perturbed through the flat buffers, with w_t published this step
                flat = s._flat
                checks.append(s._published is not None and s._targets is flat.flats)
                checks.append(all(p.data_ptr() >= flat.flats[0].data_ptr() for p in s._params))
                checks.append(bool(flat.twins) is twins and flat.swapped is twins)
                checks.append(s.worker.live is twins)
                if twins:  # the twin holds w_t, untouched; the parameters w_t + e
                    checks.append(all(torch.equal(t, w) for t, w in zip(flat.twins, w_t)))
                    checks.append(all(torch.equal(f, t + e) for f, t, e in zip(flat.flats, flat.twins, s._direction_flats)))
                else:  # the published copy holds w_t, the parameters w_t + e
                    checks.append(all(torch.equal(c, w) for c, w in zip(s._published, w_t)))
                    checks.append(all(torch.equal(f, w + e) for f, w, e in zip(flat.flats, w_t, s._direction_flats)))

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            s = trainer.strategy
            if s._published is not None:
                checks.append(not s._flat.swapped)
                checks.append(all(torch.equal(t, w) for t, w in zip(s._targets, w_t)))

    model = TinyClassifier()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=1, accumulate_grad_batches=2,
                callbacks=[Probe()])
    t.fit(model, loader(make_data(n=64, dtype=torch.float32), 8))
    assert len(checks) >= 10 and all(checks)
    # After the fit each parameter has a storage of its own again (what safetensors requires).
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in model.parameters())


def test_flat_twins_trade_memory_and_a_release_undoes_a_swap_left_behind() -> None:
    from lightning_asyncsam.ascent.flat_params import FlatParameters

    net = torch.nn.Linear(3, 2)
    w = [p.detach().clone() for p in net.parameters()]
    flat = FlatParameters(list(net.parameters()), twins=True)
    torch.add(flat.flats[0], 1.0, out=flat.twins[0])
    before = net.weight.data_ptr()
    flat.swap()
    flat.swapped = True
    assert net.weight.data_ptr() != before and torch.equal(net.weight, w[0] + 1.0) and torch.equal(net.bias, w[1] + 1.0)
    assert not flat.intact()  # the parameters do not point where they started: publish() would not trust them
    flat.release()  # swaps back first, then gives each parameter its own storage
    assert torch.equal(net.weight, w[0]) and torch.equal(net.bias, w[1]) and not flat.twins


def test_no_twins_where_the_storage_swap_does_not_swap(monkeypatch) -> None:
    """A torch whose private swap behaves otherwise: the strategy restores by a copy, it does not fail mid-step."""
    from lightning_asyncsam.ascent import flat_params

    monkeypatch.setattr(flat_params, "SWAP_DATA", lambda a, b: None)
    flat = flat_params.FlatParameters(list(torch.nn.Linear(3, 2).parameters()), twins=True)
    assert flat.active and not flat.twins


def test_parameters_that_cannot_move_keep_the_per_tensor_path() -> None:
    from lightning_asyncsam.ascent.flat_params import FlatParameters

    weight = torch.nn.Parameter(torch.randn(4, 3).t())  # not contiguous
    assert not FlatParameters([weight, torch.nn.Parameter(torch.zeros(3))]).active
    base = torch.zeros(6)
    shared = [torch.nn.Parameter(base[:3]), torch.nn.Parameter(base[3:])]  # one storage, e.g. ZeRO's buckets
    assert not FlatParameters(shared).active
    net = torch.nn.Linear(3, 2)
    flat = FlatParameters(list(net.parameters()))
    assert flat.intact()
    net.weight.data = net.weight.data.clone()  # something gave a parameter new storage: no longer flat
    assert not flat.intact()


@pytest.mark.parametrize("rho", [None, 0.05])
def test_the_worker_delivers_e_or_g(rho) -> None:
    model = TinyClassifier()
    params = list(model.parameters())
    worker = AscentWorker(model, params, "cpu", threads=1, capacity=8, rho=rho)
    ds = make_data(dtype=torch.float32)
    x, y = ds.tensors[0][:8], ds.tensors[1][:8]
    try:
        worker.start()
        worker.publish()
        worker.submit(0, (x, y), 8, batch_idx=0)
        result = worker.collect(timeout=30)
    finally:
        worker.close()
    g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    norm = torch.cat([t.flatten() for t in g]).norm().item()
    want = g if rho is None else [t * (rho / norm) for t in g]
    assert abs(result.grad_norm - norm) < 1e-5  # ||g|| either way: the diagnostics and the non-finite check
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(worker.grads[0].views(), want))
    assert worker.delivers_step is (rho is not None)


def test_the_mailbox_orders_steps_and_results_across_processes() -> None:
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # spawned workers carry it in the slow tests (test_launchers.py, test_reliability.py)
    box = Mailbox(ctx)
    proc = ctx.Process(target=_echo, args=(box, 5), daemon=True)
    proc.start()
    try:
        for step in range(5):
            box.post_step(step, n=step + 1, batch_idx=7, messages=0)
            assert box.take_result(timeout=30)
            assert box.result() == (step, 7.0, float(step + 1), step + 1)
        assert not box.take_result(timeout=0.0)  # nothing posted: no result, and no blocking
    finally:
        box.post_stop(messages=0)
        proc.join(10)
    assert proc.exitcode == 0


def _echo(box: Mailbox, steps: int) -> None:
    for _ in range(steps):
        assert box.wait_step(spin_s=0.001, alive=lambda: True)
        step, n, batch_idx, _, _ = box.step()
        box.post_result(step, float(batch_idx), float(n), n)
    assert box.wait_step(spin_s=0.0, alive=lambda: True) and box.step()[0] < 0


def test_a_resumed_run_with_another_rho_rescales_the_held_perturbation(tmp_path) -> None:
    """The checkpoint holds e for the rho that made it; resumed with another rho, the first step's e has the new radius."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    t = trainer(AsyncSAMStrategy(rho=0.05, ascent_batch_size=4, ascent_threads=1), max_epochs=1,
                precision="64-true", callbacks=[ckpt], enable_checkpointing=True)
    t.fit(in_float64(TinyClassifier), loader(make_data(), 8))
    state = torch.load(tmp_path / "epoch=0.ckpt", weights_only=True)["callbacks"]["AsyncSAMCallback"]
    assert state["rho"] == 0.05
    assert abs(torch.cat([g.flatten() for g in state["grads"]]).norm().item() - 0.05) < 1e-6

    norms: list[float] = []

    class FirstStep(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss) -> None:
            if trainer.strategy.direction is not None and not norms:
                norms.append(torch.cat([d.flatten() for d in trainer.strategy.direction]).norm().item())

    t2 = trainer(AsyncSAMStrategy(rho=0.2, ascent_batch_size=4, ascent_threads=1), max_epochs=2,
                 precision="64-true", callbacks=[FirstStep()])
    t2.fit(in_float64(TinyClassifier), loader(make_data(), 8), ckpt_path=tmp_path / "epoch=0.ckpt")
    assert norms and abs(norms[0] - 0.2) < 1e-6


class StridedClassifier(TinyClassifier):
    """The same network with a non-contiguous first weight (same values): its parameters cannot move into flat buffers."""

    def __init__(self, optimizer: str = "sgd") -> None:
        super().__init__(optimizer)
        first = self.net[0]
        first.weight = torch.nn.Parameter(first.weight.detach().t().contiguous().t())
        assert not first.weight.is_contiguous()


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam_rule", "asam_rule"])
def test_the_per_tensor_path_follows_the_flat_path_step_by_step(adaptive) -> None:
    from tiny import fit_float64

    def strategy():
        return AsyncSAMStrategy(rho=0.05, ascent_batch_size=4, ascent_threads=1, adaptive=adaptive)

    paths: list[bool] = []

    class Path(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss) -> None:
            s = trainer.strategy
            if s._perturbed:
                paths.append(s._targets is s._params)

    flat = fit_float64(strategy(), epochs=2, callbacks=[Path()])
    assert paths and not any(paths)  # the flat buffers
    paths.clear()
    strided = fit_float64(strategy(), epochs=2, module=StridedClassifier, callbacks=[Path()])
    assert paths and all(paths)  # one operation per tensor
    assert len(flat) == len(strided)
    for a, b in zip(flat, strided):
        assert all(torch.allclose(x, y, atol=1e-12, rtol=0) for x, y in zip(a, b))


def test_the_worker_mirrors_what_a_training_forward_reads() -> None:
    """BatchNorm's running statistics are only written in training mode: not published. Other buffers are."""

    class RenormLike(torch.nn.BatchNorm1d):  # a subclass may read its statistics in training mode
        pass

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.bn = torch.nn.BatchNorm1d(3)
            self.renorm = RenormLike(3)
            self.register_buffer("scale", torch.ones(3))

    net = Net()
    worker = AscentWorker(net, list(net.parameters()), "cpu", threads=1, capacity=2)
    try:
        mirrored = set(worker.weight_names)
        assert {"scale", "renorm.running_mean", "renorm.running_var", "renorm.num_batches_tracked"} <= mirrored
        assert not {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} & mirrored
        assert set(worker.grad_names) == {n for n, _ in net.named_parameters()}
    finally:
        worker.close()


@pytest.mark.parametrize("make", [TinyClassifier, ManualClassifier], ids=["automatic", "manual"])
def test_the_counters_read_directly_are_the_global_step_and_epoch(make, tmp_path) -> None:
    """optimizer_step_counter() and epoch_counter() read Lightning's progress trackers, made once per fit:
    they must say what trainer.global_step and trainer.current_epoch say on every batch, in a fit and in
    one resumed from its checkpoint."""
    from lightning_asyncsam.logging_steps import epoch_counter, optimizer_step_counter

    seen: list[tuple[int, int, int, int]] = []

    class Compare(L.Callback):
        counters = None

        def on_train_start(self, trainer, pl_module) -> None:
            self.counters = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.counters is None:
                self.counters = (optimizer_step_counter(trainer, manual=not pl_module.automatic_optimization),
                                 epoch_counter(trainer))
            self.on_train_batch_end(trainer, pl_module, None, batch, batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step, epoch = self.counters
            seen.append((step(), trainer.global_step, epoch(), trainer.current_epoch))

    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=2, callbacks=[Compare()])
    t.fit(make(), loader(make_data(n=32, dtype=torch.float32), 8))
    assert len(seen) == 16 and all(a == b and c == d for a, b, c, d in seen), seen
    assert seen[-1][1] == 8 and seen[-1][3] == 1
    path = tmp_path / "two_epochs.ckpt"
    t.save_checkpoint(path)
    seen.clear()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=3, callbacks=[Compare()])
    t.fit(make(), loader(make_data(n=32, dtype=torch.float32), 8), ckpt_path=path)
    assert len(seen) == 8 and all(a == b and c == d for a, b, c, d in seen), seen
    assert seen[0][1] == 8 and seen[-1][1] == 12 and seen[0][3] == 2


def test_the_base_strategy_backward_hooks_are_empty() -> None:
    """One process skips Strategy.pre_backward and post_backward (each call costs a microsecond mid-step):
    that is right only while Lightning's are empty."""
    from lightning.pytorch.strategies import Strategy

    def empty(self, closure_loss):  # noqa: ANN001, ANN202
        """A docstring adds no bytecode."""

    for hook in (Strategy.pre_backward, Strategy.post_backward):
        assert hook.__code__.co_code == empty.__code__.co_code, f"{hook.__qualname__} is no longer empty"
