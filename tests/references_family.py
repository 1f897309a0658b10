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


def reference_asam(net: nn.Module, opt: torch.optim.Optimizer, epochs: list[list[tuple[Tensor, Tensor]]],
                   rho: float, eta: float, accumulate: int = 1) -> list[list[Tensor]]:
    """ASAM (Kwon et al.): SAM with e = rho T^2 g / ||T g||, on every (micro-)batch."""
    history = []
    for batches in epochs:
        for i in range(0, len(batches), accumulate):
            opt.zero_grad()
            for batch in batches[i : i + accumulate]:
                old = _asam_perturb(net, _grads(net, batch), rho, eta)
                (_loss(net, batch) / accumulate).backward()
                _restore(net, old)
            history.append(_clip_and_step(net, opt, None))
    return history


def reference_gsam(net: nn.Module, opt: torch.optim.Optimizer, epochs: list[list[tuple[Tensor, Tensor]]],
                   rho: float, alpha: float, adaptive: bool = False, eta: float = 0.01,
                   clip: float | None = None) -> list[list[Tensor]]:
    """GSAM (Zhuang et al.): d = g_p - alpha (g - (<g, g_p> / ||g_p||^2) g_p), then clip and step."""
    history = []
    for batches in epochs:
        for batch in batches:
            g = _grads(net, batch)
            old = _asam_perturb(net, g, rho, eta) if adaptive else _perturb(net, g, rho)
            opt.zero_grad()
            _loss(net, batch).backward()
            _restore(net, old)
            g_p = [p.grad for p in net.parameters()]
            coef = _dot(g, g_p) / (_norm(g_p) ** 2 + EPS)
            d = [gp - alpha * (gi - coef * gp) for gi, gp in zip(g, g_p)]
            for p, di in zip(net.parameters(), d):
                p.grad = di
            history.append(_clip_and_step(net, opt, clip))
    return history


def reference_looksam(net: nn.Module, opt: torch.optim.Optimizer, epochs: list[list[tuple[Tensor, Tensor]]],
                      rho: float, interval: int, alpha: float, accumulate: int = 1,
                      clip: float | None = None) -> list[list[Tensor]]:
    """LookSAM (Liu et al.): SAM and a new g_v at t mod k = 0; d = g + alpha (||g|| / ||g_v||) g_v otherwise.

    With accumulation, each micro-batch of a SAM step is perturbed by its own g, and g_v is built
    from the accumulated g_s and the sum of the micro-batches' g.
    """
    history: list[list[Tensor]] = []
    g_v = [torch.zeros_like(p) for p in net.parameters()]
    for batches in epochs:
        for i in range(0, len(batches), accumulate):
            t = len(history)
            sam_step = t % interval == 0
            g_sum = [torch.zeros_like(p) for p in net.parameters()]
            opt.zero_grad()
            for batch in batches[i : i + accumulate]:
                if sam_step:
                    g = _grads(net, batch)
                    g_sum = [a + b for a, b in zip(g_sum, g)]
                    old = _perturb(net, g, rho)
                (_loss(net, batch) / accumulate).backward()
                if sam_step:
                    _restore(net, old)
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

