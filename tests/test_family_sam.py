"""ASAM, GSAM and LookSAM (issue 9): their serial float64 references to 1e-10, their limits and their safety nets."""

from __future__ import annotations

from functools import partial

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, DistributedSampler

import lightning_asyncsam  # noqa: F401  (registers the names)
from lightning_asyncsam import GSAMStrategy, LookSAMStrategy, SAMStrategy
from lightning_asyncsam.functional import cosine_similarity
from lightning_asyncsam.rules_sam import gsam_direction_, inner, looksam_orthogonal_, looksam_reuse_
from references_family import Shards, reference_asam, reference_gsam, reference_looksam
from tiny import (
    ManualClassifier,
    assert_trajectories_close,
    epochs_of,
    FiniteOnlyClassifier,
    fit_float64,
    in_float64,
    loader,
    make_data,
    make_data_with_nan,
    Recorder,
    reference_net,
    reference_sam,
    reference_sgd,
    TinyClassifier,
    trainer,
)

B, EPOCHS, RHO, ETA = 8, 4, 0.3, 0.05  # 48 samples / 8 = 6 steps an epoch, 24 steps in all

_fit = partial(fit_float64, epochs=EPOCHS, batch_size=B)
_net = reference_net


def _data():
    return epochs_of(make_data(), B, EPOCHS)


# ----------------------------------------------------------------------------- the rules, step by step
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_asam_matches_reference(optimizer: str) -> None:
    got = _fit(SAMStrategy(rho=RHO, adaptive=True, eta=ETA), optimizer)
    assert_trajectories_close(got, reference_asam(*_net(optimizer), _data(), RHO, ETA))


def test_asam_with_gradient_accumulation() -> None:
    got = _fit(SAMStrategy(rho=RHO, adaptive=True, eta=ETA), accumulate=3)
    assert_trajectories_close(got, reference_asam(*_net(), _data(), RHO, ETA, accumulate=3))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_gsam_matches_reference(optimizer: str, adaptive: bool) -> None:
    got = _fit(GSAMStrategy(rho=RHO, alpha=0.8, adaptive=adaptive, eta=ETA), optimizer)
    assert_trajectories_close(got, reference_gsam(*_net(optimizer), _data(), RHO, 0.8, adaptive, ETA))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("interval", [2, 3])
def test_looksam_matches_reference(optimizer: str, interval: int) -> None:
    got = _fit(LookSAMStrategy(rho=RHO, interval=interval, alpha=0.7), optimizer)
    assert_trajectories_close(got, reference_looksam(*_net(optimizer), _data(), RHO, interval, 0.7))


def test_looksam_with_gradient_accumulation() -> None:
    got = _fit(LookSAMStrategy(rho=RHO, interval=2, alpha=0.7), accumulate=2)
    assert_trajectories_close(got, reference_looksam(*_net(), _data(), RHO, 2, 0.7, accumulate=2))


def test_clipping_sees_the_rebuilt_direction() -> None:
    """d, not g_p or g, is what the clip scales: the references clip d."""
    got = _fit(GSAMStrategy(rho=RHO, alpha=0.8), gradient_clip_val=0.05)
    assert_trajectories_close(got, reference_gsam(*_net(), _data(), RHO, 0.8, clip=0.05))
    got = _fit(LookSAMStrategy(rho=RHO, interval=2, alpha=0.7), gradient_clip_val=0.05)
    assert_trajectories_close(got, reference_looksam(*_net(), _data(), RHO, 2, 0.7, clip=0.05))


def test_gsam_without_alpha_and_looksam_every_step_are_sam() -> None:
    want = reference_sam(*_net(), _data(), RHO)
    assert_trajectories_close(_fit(GSAMStrategy(rho=RHO, alpha=0.0)), want)
    assert_trajectories_close(_fit(LookSAMStrategy(rho=RHO, interval=1)), want)


def test_manual_optimization_matches_reference() -> None:
    for strategy, reference in [(GSAMStrategy(rho=RHO, alpha=0.8), lambda: reference_gsam(*_net(), _data(), RHO, 0.8)),
                                (LookSAMStrategy(rho=RHO, interval=3, alpha=0.7),
                                 lambda: reference_looksam(*_net(), _data(), RHO, 3, 0.7))]:
        model = in_float64(ManualClassifier)
        rec = Recorder()
        trainer(strategy, max_epochs=EPOCHS, precision="64-true", callbacks=[rec]).fit(model, loader(make_data(), B))
        assert_trajectories_close(rec.steps, reference())


def test_references_differ_from_sam_and_sgd() -> None:
    """Guards the guard: each reference must be its own rule, or matching it proves nothing."""
    gap = lambda a, b: max((x - y).abs().max().item() for x, y in zip(a[-1], b[-1]))  # noqa: E731
    sgd, sam = reference_sgd(*_net(), _data()), reference_sam(*_net(), _data(), RHO)
    for rule in [reference_asam(*_net(), _data(), RHO, ETA), reference_gsam(*_net(), _data(), RHO, 0.8),
                 reference_gsam(*_net(), _data(), RHO, 0.8, adaptive=True, eta=ETA),
                 reference_looksam(*_net(), _data(), RHO, 2, 0.7)]:
        assert gap(rule, sam) > 1e-3 and gap(rule, sgd) > 1e-3


def test_looksam_keeps_g_v_across_fit_calls() -> None:
    model = in_float64(lambda: TinyClassifier("plain_sgd"))
    rec = Recorder()
    t = trainer(LookSAMStrategy(rho=RHO, interval=4, alpha=0.7), max_epochs=1, precision="64-true", callbacks=[rec])
    t.fit(model, loader(make_data(), B))
    t.fit_loop.max_epochs = 2
    t.fit(model, loader(make_data(), B))  # starts at t = 6, which reuses the g_v of t = 4
    want = reference_looksam(*_net("plain_sgd"), epochs_of(make_data(), B, 2), RHO, 4, 0.7)
    assert_trajectories_close(rec.steps, want)


# ----------------------------------------------------------------------------- the math
def test_the_kept_directions_are_orthogonal() -> None:
    gen = torch.Generator().manual_seed(0)
    g, g_s = ([torch.randn(shape, generator=gen, dtype=torch.float64) for shape in [(3, 2), (4,)]] for _ in range(2))
    g_v = [torch.zeros_like(x) for x in g]
    assert looksam_orthogonal_(g_v, g_s, g)
    assert abs(inner(g_v, g).item()) < 1e-12
    d = [x.clone() for x in g_s]
    gsam_direction_(d, g, alpha=1.0)  # d = g_s - g_perp
    g_perp = [s - x for s, x in zip(g_s, d)]
    assert abs(inner(g_perp, g_s).item()) < 1e-12
    parallel = [a - b for a, b in zip(g, g_perp)]  # what GSAM leaves of g: along g_s
    assert abs(cosine_similarity(parallel, g_s).abs().item() - 1) < 1e-12
    before = [x.clone() for x in g]
    looksam_reuse_(g, [torch.zeros_like(x) for x in g], alpha=0.7)  # no g_v yet: d = g
    assert all(torch.equal(a, b) for a, b in zip(g, before))


def test_a_non_finite_g_v_keeps_the_previous_one() -> None:
    g_v = [torch.tensor([0.0, 1.0])]
    assert not looksam_orthogonal_(g_v, [torch.tensor([1.0, 2.0])], [torch.tensor([float("nan"), 0.0])])
    assert torch.equal(g_v[0], torch.tensor([0.0, 1.0]))


# ----------------------------------------------------------------------------- names and arguments
def test_registered_names_resolve_to_the_rules() -> None:
    for name, cls, method in [("asam", SAMStrategy, "popen"), ("asam_spawn", SAMStrategy, "spawn"),
                              ("gsam", GSAMStrategy, "popen"), ("gsam_fork", GSAMStrategy, "fork"),
                              ("looksam", LookSAMStrategy, "popen"), ("looksam_notebook", LookSAMStrategy, "fork")]:
        s = trainer(name).strategy
        assert type(s) is cls and s._start_method == method
    asam, sam = trainer("asam").strategy, trainer("sam").strategy
    assert (asam.rho, asam.adaptive, asam.eta) == (0.5, True, 0.01)
    assert (sam.rho, sam.adaptive) == (0.05, False)
    gsam, looksam = GSAMStrategy(), LookSAMStrategy()
    assert (gsam.rho, gsam.alpha, gsam.adaptive, gsam.eta) == (0.1, 0.8, False, 0.01)
    assert (looksam.rho, looksam.interval, looksam.alpha) == (0.1, 2, 0.7)


@pytest.mark.parametrize(("make", "name"), [
    (lambda: SAMStrategy(adaptive="yes"), "adaptive"),
    (lambda: SAMStrategy(adaptive=True, eta=-0.1), "eta"),
    (lambda: GSAMStrategy(alpha=float("nan")), "alpha"),
    (lambda: GSAMStrategy(alpha=-0.5), "alpha"),
    (lambda: GSAMStrategy(rho=0.0), "rho"),
    (lambda: LookSAMStrategy(interval=0), "interval"),
    (lambda: LookSAMStrategy(interval=2.5), "interval"),
    (lambda: LookSAMStrategy(interval=True), "interval"),
    (lambda: LookSAMStrategy(alpha=-1), "alpha"),
    (lambda: LookSAMStrategy(adaptive=True), "adaptive"),
    (lambda: LookSAMStrategy(intervall=3), r"'intervall' \(did you mean 'interval'\?\)"),
    (lambda: GSAMStrategy(alpah=0.3), r"'alpah' \(did you mean 'alpha'\?\)"),
])
def test_bad_arguments_raise_naming_them(make, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make()


def test_gsam_refuses_gradient_accumulation() -> None:
    t = trainer(GSAMStrategy(), max_epochs=1, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        t.fit(TinyClassifier(), loader(make_data(dtype=torch.float32), B))


@pytest.mark.parametrize("make_strategy", [GSAMStrategy, LookSAMStrategy], ids=["gsam", "looksam"])
def test_a_gradient_scaler_is_refused(make_strategy) -> None:
    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    t = trainer(make_strategy(), max_epochs=1, plugins=[scaled])
    with pytest.raises(ValueError, match="gradient scaler"):
        t.fit(TinyClassifier(), loader(make_data(dtype=torch.float32), B))


# ----------------------------------------------------------------------------- works with
RULES = {
    "asam": lambda **kw: SAMStrategy(rho=RHO, adaptive=True, eta=ETA, **kw),
    "gsam": lambda **kw: GSAMStrategy(rho=RHO, alpha=0.8, **kw),
    "looksam": lambda **kw: LookSAMStrategy(rho=RHO, interval=4, alpha=0.7, **kw),  # t = 6, 7 reuse t = 4's g_v
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_non_finite_ascent_is_never_applied(rule: str) -> None:
    """One NaN sample that training_step drops but ascent_loss keeps (issue 10): the weights stay finite."""
    model = FiniteOnlyClassifier()
    strategy = RULES[rule]()
    t = trainer(strategy, max_epochs=1, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(model, loader(make_data_with_nan(), 32))  # the NaN sits in step 0's batch, a SAM step for all three
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert t.callback_metrics["sam/skipped_ascents"].item() == 1.0
    assert sum("non-finite gradient" in str(w.message) for w in caught) == 1
    if rule == "looksam":
        assert all(torch.isfinite(v).all() for v in strategy._g_v)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_resume_from_checkpoint_continues_the_trajectory(tmp_path, rule: str) -> None:
    full = in_float64(TinyClassifier)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer(RULES[rule](), max_epochs=3, precision="64-true", callbacks=[ckpt],
            enable_checkpointing=True).fit(full, loader(make_data(), B))

    path = tmp_path / "epoch=0.ckpt"
    if rule == "looksam":
        saved = torch.load(path, weights_only=True)["callbacks"]["RuleStateCallback"]["g_v"]
        assert any(v.abs().max() > 0 for v in saved)
    resumed = in_float64(lambda: TinyClassifier(seed=123))  # other initial weights: the checkpoint must win
    trainer(RULES[rule](), max_epochs=3, precision="64-true").fit(resumed, loader(make_data(), B), ckpt_path=path)
    for a, b in zip(resumed.parameters(), full.parameters()):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_bf16_mixed_trains(rule: str) -> None:
    model = TinyClassifier()
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(RULES[rule](), max_epochs=2, precision="bf16-mixed")
    t.fit(model, loader(make_data(dtype=torch.float32), B))
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(model.parameters(), before))
    assert t.global_step == 12


class ReplicasAgree(L.Callback):
    """Runs inside each rank: after every step the replicas, and LookSAM's g_v, are identical."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        strategy = trainer.strategy
        assert not strategy._single_process and torch.distributed.is_initialized()
        kept = strategy._g_v if isinstance(strategy, LookSAMStrategy) else []
        flat = torch.cat([t.detach().flatten() for t in [*pl_module.parameters(), *kept]])
        gathered = strategy.all_gather(flat)
        assert torch.equal(gathered[0], gathered[1]), "DDP replicas diverged"


DDP_REFERENCES = {
    "asam": lambda net, opt, epochs: reference_asam(net, opt, epochs, RHO, ETA),
    "gsam": lambda net, opt, epochs: reference_gsam(net, opt, epochs, RHO, 0.8),
    "looksam": lambda net, opt, epochs: reference_looksam(net, opt, epochs, RHO, 4, 0.7),
}


@pytest.mark.slow
@pytest.mark.parametrize("rule", sorted(RULES))
def test_ddp_two_processes_match_the_data_parallel_reference(rule: str) -> None:
    """Two ranks (spawn, gloo, float64): each perturbs with its own g; d, g_v and the replicas agree."""
    model = in_float64(TinyClassifier)
    t = trainer(RULES[rule](start_method="spawn"), devices=2, max_epochs=2, precision="64-true",
                callbacks=[ReplicasAgree()])
    t.fit(model, loader(make_data(), B))

    def shard(rank: int, epoch: int) -> list:  # Lightning's DistributedSampler for training: shuffled, seed 0
        sampler = DistributedSampler(make_data(), num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        return list(DataLoader(make_data(), batch_size=B, sampler=sampler))

    epochs = [[Shards(step) for step in zip(shard(0, e), shard(1, e))] for e in range(2)]
    want = DDP_REFERENCES[rule](*_net(), epochs)
    assert len(want) == 6
    for a, b in zip(model.parameters(), want[-1]):  # ddp_spawn hands rank 0's weights back
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
