"""Serial plain-PyTorch float64 references for the SAM family (issue 9), one function per rule.

Each is written from the rule's definition, independently of the library's math, and returns the
weights after every optimizer step: the strategies must match them step by step to 1e-10.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tiny import _grads, _loss, _perturb, _restore

EPS = 1e-12


# --- family1 ---------------------------------------------------------------------------------
def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(_dot(a, a))


def _asam_perturb(net: nn.Module, g: Sequence[Tensor], rho: float, eta: float) -> list[Tensor]:
    """w <- w + rho T^2 g / (||T g|| + eps), T = |w| + eta on "...weight" parameters, 1 elsewhere."""
    old = [p.detach().clone() for p in net.parameters()]
    t = [(p.detach().abs() + eta) if n.endswith("weight") else torch.ones_like(p) for n, p in net.named_parameters()]
    norm = _norm([ti * gi for ti, gi in zip(t, g)])
    with torch.no_grad():
        for p, ti, gi in zip(net.parameters(), t, g):
            p.add_(ti * ti * gi * (rho / (norm + EPS)))
    return old


def _clip_and_step(net: nn.Module, opt: torch.optim.Optimizer, clip: float | None) -> list[Tensor]:
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    return [p.detach().clone() for p in net.parameters()]


class Shards(list):
    """One step's batches, one per DDP rank (in place of a batch): the references then run data-parallel."""


def _sam_pass(net: nn.Module, batch, rho: float, weight: float = 1.0, adaptive: bool = False,
              eta: float = 0.0) -> list[Tensor]:
    """Each rank: g_r at w on its batch, and loss(w + e_r) * weight backward into .grad, averaged over the
    ranks (DDP's all-reduce); returns the mean of the g_r."""
    parts = list(batch) if isinstance(batch, Shards) else [batch]
    g_mean = [torch.zeros_like(p) for p in net.parameters()]
    for part in parts:
        g = _grads(net, part)
        old = _asam_perturb(net, g, rho, eta) if adaptive else _perturb(net, g, rho)
        (_loss(net, part) * weight / len(parts)).backward()
        _restore(net, old)
        g_mean = [m + x / len(parts) for m, x in zip(g_mean, g)]
    return g_mean


def _plain_pass(net: nn.Module, batch, weight: float = 1.0) -> None:
    parts = list(batch) if isinstance(batch, Shards) else [batch]
    for part in parts:
        (_loss(net, part) * weight / len(parts)).backward()


def reference_asam(net: nn.Module, opt: torch.optim.Optimizer, epochs: list[list], rho: float, eta: float,
                   accumulate: int = 1) -> list[list[Tensor]]:
    """ASAM (Kwon et al.): SAM with e = rho T^2 g / ||T g||, on every (micro-)batch."""
    history = []
    for batches in epochs:
        for i in range(0, len(batches), accumulate):
            opt.zero_grad()
            for batch in batches[i : i + accumulate]:
                _sam_pass(net, batch, rho, 1 / accumulate, adaptive=True, eta=eta)
            history.append(_clip_and_step(net, opt, None))
    return history


def reference_gsam(net: nn.Module, opt: torch.optim.Optimizer, epochs: list[list], rho: float, alpha: float,
                   adaptive: bool = False, eta: float = 0.01, clip: float | None = None) -> list[list[Tensor]]:
    """GSAM (Zhuang et al.): d = g_p - alpha (g - (<g, g_p> / ||g_p||^2) g_p), then clip and step."""
    history = []
    for batches in epochs:
        for batch in batches:
            opt.zero_grad()
            g = _sam_pass(net, batch, rho, adaptive=adaptive, eta=eta)
            g_p = [p.grad for p in net.parameters()]
            coef = _dot(g, g_p) / (_norm(g_p) ** 2 + EPS)
            for p, gi, gp in zip(net.parameters(), g, g_p):
                p.grad = gp - alpha * (gi - coef * gp)
            history.append(_clip_and_step(net, opt, clip))
    return history


def reference_looksam(net: nn.Module, opt: torch.optim.Optimizer, epochs: list[list], rho: float, interval: int,
                      alpha: float, accumulate: int = 1, clip: float | None = None) -> list[list[Tensor]]:
    """LookSAM (Liu et al.): SAM and a new g_v at t mod k = 0; d = g + alpha (||g|| / ||g_v||) g_v otherwise.

    With accumulation, each micro-batch of a SAM step is perturbed by its own g, and g_v is built
    from the accumulated g_s and the sum of the micro-batches' g.
    """
    history: list[list[Tensor]] = []
    g_v = [torch.zeros_like(p) for p in net.parameters()]
    for batches in epochs:
        for i in range(0, len(batches), accumulate):
            sam_step = len(history) % interval == 0
            g_sum = [torch.zeros_like(p) for p in net.parameters()]
            opt.zero_grad()
            for batch in batches[i : i + accumulate]:
                if sam_step:
                    g_sum = [a + b for a, b in zip(g_sum, _sam_pass(net, batch, rho, 1 / accumulate))]
                else:
                    _plain_pass(net, batch, 1 / accumulate)
            grad = [p.grad for p in net.parameters()]
            if sam_step:  # d = g_s
                coef = _dot(grad, g_sum) / (_norm(g_sum) ** 2 + EPS)
                g_v = [gs - coef * gi for gs, gi in zip(grad, g_sum)]
            else:
                scale = alpha * _norm(grad) / (_norm(g_v) + EPS)
                for p, v in zip(net.parameters(), g_v):
                    p.grad = p.grad + scale * v
            history.append(_clip_and_step(net, opt, clip))
    return history


# --- family2 ---
# ESAM, AE-SAM and MESA, written from the papers' algorithms without the package's code.

import math as _math

import torch as _torch
from torch.nn import functional as _F

from tiny import _grads, _loss, _restore


def _per_sample_losses(net, batch):
    x, y = batch
    return _F.cross_entropy(net(x), y, reduction="none")


def _add_(net, step, scale: float):
    """w <- w + scale * step, returning the exact old weights."""
    old = [p.detach().clone() for p in net.parameters()]
    with _torch.no_grad():
        for p, s in zip(net.parameters(), step):
            p.add_(s * scale)
    return old


def _norm(tensors):
    return _torch.sqrt(sum((t * t).sum() for t in tensors))


def reference_esam(net, opt, epochs, rho: float, beta: float, gamma: float, seed: int = 0, accumulate: int = 1):
    """ESAM (Du et al., 2022): SWP with probability beta per tensor, SDS keeping ceil(gamma b) samples."""
    generator = _torch.Generator().manual_seed(seed)
    params = list(net.parameters())
    history = []
    for batches in epochs:
        for i in range(0, len(batches), accumulate):
            opt.zero_grad()
            for x, y in batches[i : i + accumulate]:
                keep = _torch.rand(len(params), generator=generator, dtype=_torch.float64) < beta
                before = _per_sample_losses(net, (x, y))
                full = _torch.autograd.grad(before.mean(), params)
                g_m = [g if k else _torch.zeros_like(g) for g, k in zip(full, keep.tolist())]
                old = _add_(net, g_m, rho / beta / (_norm(g_m).item() + 1e-12))
                k = _math.ceil(round(gamma * len(y), 9))
                if k < len(y):
                    with _torch.no_grad():
                        sharp = _per_sample_losses(net, (x, y)) - before.detach()
                    sharp = _torch.nan_to_num(sharp, nan=-_math.inf, posinf=-_math.inf)
                    chosen = _torch.argsort(sharp, descending=True, stable=True)[:k]
                    x, y = x[chosen], y[chosen]
                (_per_sample_losses(net, (x, y)).mean() / accumulate).backward()
                _restore(net, old)
            opt.step()
            history.append([p.detach().clone() for p in net.parameters()])
    return history


def reference_aesam(net, opt, epochs, rho: float, lambda1: float, lambda2: float, decay: float, total: int,
                    accumulate: int = 1):
    """AE-SAM (Jiang et al., 2023, Algorithm 1). Returns the weights after every step and the SAM count."""
    mu = var = 0.0
    sam_steps = t = 0
    history = []
    for batches in epochs:
        for i in range(0, len(batches), accumulate):
            opt.zero_grad()
            for batch in batches[i : i + accumulate]:
                g = _grads(net, batch)
                q = float(sum((x * x).sum() for x in g))
                mu = decay * mu + (1 - decay) * q
                var = decay * var + (1 - decay) * (q - mu) ** 2
                c = (t / total) * lambda1 + (1 - t / total) * lambda2
                old = None
                if q >= mu + c * _math.sqrt(var):
                    sam_steps += 1
                    old = _add_(net, g, rho / (_math.sqrt(q) + 1e-12))
                (_loss(net, batch) / accumulate).backward()
                if old is not None:
                    _restore(net, old)
            opt.step()
            t += 1
            history.append([p.detach().clone() for p in net.parameters()])
    return history, sam_steps


def reference_mesa(net, opt, epochs, beta: float, lam: float, tau: float, start_epoch: int, accumulate: int = 1):
    """MESA (Du et al., 2022, Eq. 6-7): cross-entropy plus lam tau^2 KL to an EMA of the weights."""
    names = [n for n, _ in net.named_parameters()] + [n for n, _ in net.named_buffers()]
    live = list(net.parameters()) + list(net.buffers())
    ema = [t.detach().clone() for t in live]
    history = []
    for epoch, batches in enumerate(epochs):
        for i in range(0, len(batches), accumulate):
            opt.zero_grad()
            for x, y in batches[i : i + accumulate]:
                logits = net(x)
                loss = _F.cross_entropy(logits, y)
                if epoch >= start_epoch and lam > 0:
                    with _torch.no_grad():
                        net.eval()
                        ema_logits = _torch.func.functional_call(net, dict(zip(names, ema)), (x,))
                        net.train()
                    kl = _F.kl_div(_F.log_softmax(logits / tau, -1), _F.softmax(ema_logits / tau, -1),
                                   reduction="batchmean")
                    loss = loss + lam * tau**2 * kl
                (loss / accumulate).backward()
            opt.step()
            with _torch.no_grad():
                for e, w in zip(ema, live):
                    e.copy_(beta * e + (1 - beta) * w if e.is_floating_point() else w)
            history.append([p.detach().clone() for p in net.parameters()])
    return history
