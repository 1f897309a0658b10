"""The math of the efficient SAM variants as small pure functions (no Lightning): ESAM, AE-SAM, MESA.

* ESAM (Du et al., 2022, "Efficient Sharpness-aware Minimization", as in dydjw9/Efficient_SAM):
  stochastic weight perturbation (a random subset of the parameter tensors, Sec. 3.1) and
  sharpness-sensitive data selection (Sec. 3.2).
* AE-SAM (Jiang et al., 2023, "An Adaptive Policy to Employ Sharpness-Aware Minimization",
  Algorithm 1): SAM only where ``||g||^2`` is large against its running mean and deviation.
* MESA (Du et al., 2022, "Sharpness-Aware Training for Free", Eq. 7, the memory-efficient form):
  a KL term towards the outputs of an exponential moving average of the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def esam_keep_mask(n_tensors: int, beta: float, generator: torch.Generator) -> list[bool]:
    """Which parameter tensors ESAM's stochastic weight perturbation keeps this step.

    ESAM Sec. 3.1: each tensor independently with probability ``beta`` (one uniform draw per tensor
    from ``generator``, in parameter order, so a seeded generator reproduces the sequence).

    Example::

        >>> esam_keep_mask(4, 1.0, torch.Generator().manual_seed(0))
        [True, True, True, True]
        >>> esam_keep_mask(3, 0.0, torch.Generator().manual_seed(0))
        [False, False, False]
    """
    draws = torch.rand(n_tensors, generator=generator, dtype=torch.float64)
    return (draws < beta).tolist()


def esam_radius(rho: float, beta: float) -> float:
    """The radius of ESAM's step ``e = rho * g_m / (beta * ||g_m||)`` (ESAM Eq. 5): ``rho / beta``.

    Dividing by ``beta`` keeps the expected perturbation of each tensor that of SAM.

    Example::

        >>> esam_radius(0.1, 0.5)
        0.2
    """
    return rho / beta


def esam_subset_size(gamma: float, batch_size: int) -> int:
    """``|S| = ceil(gamma * b)``, the samples ESAM's descent keeps (ESAM Sec. 3.2).

    ``gamma * b`` is rounded to 9 digits first, so that ``0.7 * 10 = 7.000000000000001`` gives 7.

    Example::

        >>> esam_subset_size(0.7, 10), esam_subset_size(0.6, 32), esam_subset_size(1.0, 5)
        (7, 20, 5)
    """
    return max(1, min(batch_size, math.ceil(round(gamma * batch_size, 9))))


def esam_select(loss_before: Tensor, loss_after: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` samples with the largest sharpness ``l_i(w + e) - l_i(w)`` (ESAM Eq. 7).

    A sample whose sharpness is not finite (a NaN or infinite loss) ranks last, so that corrupt
    samples enter S only when fewer than ``k`` are finite. Returned in ascending order.

    Example::

        >>> esam_select(torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([1.5, 3.0, float("nan"), 2.0]), 2)
        tensor([1, 3])
    """
    sharpness = loss_after.detach() - loss_before.detach()
    sharpness = torch.where(torch.isfinite(sharpness), sharpness, torch.full_like(sharpness, -math.inf))
    return torch.topk(sharpness, k, sorted=False).indices.sort().values


@torch.no_grad()
def squared_norm(tensors: Sequence[Tensor]) -> Tensor:
    """``q = ||g||^2`` over all tensors together (AE-SAM Algorithm 1), as a 0-dim tensor.

    Example::

        >>> squared_norm([torch.tensor([3.0]), torch.tensor([4.0])])
        tensor(25.)
    """
    return torch.stack([(t.double() * t.double()).sum() for t in tensors]).sum().to(tensors[0].dtype)


def aesam_moments(q: float, mu: float, var: float, decay: float) -> tuple[float, float]:
    """AE-SAM's running moments of ``q = ||g||^2`` (Algorithm 1, lines 5-6).

    ``mu <- delta * mu + (1 - delta) * q``, then ``sigma^2 <- delta * sigma^2 + (1 - delta) * (q - mu)^2``
    with the updated ``mu``.

    Example::

        >>> aesam_moments(10.0, 0.0, 0.0, 0.5)
        (5.0, 12.5)
    """
    mu = decay * mu + (1.0 - decay) * q
    var = decay * var + (1.0 - decay) * (q - mu) ** 2
    return mu, var


def aesam_coefficient(step: int, total: int, lambda1: float, lambda2: float) -> float:
    """``c_t = (t / T) * lambda1 + (1 - t / T) * lambda2`` (AE-SAM Eq. 4): from lambda2 down to lambda1.

    Example::

        >>> aesam_coefficient(0, 100, -1.0, 1.0), aesam_coefficient(50, 100, -1.0, 1.0)
        (1.0, 0.0)
    """
    frac = step / total
    return frac * lambda1 + (1.0 - frac) * lambda2


def aesam_use_sam(q: float, mu: float, var: float, c: float) -> bool:
    """AE-SAM's policy (Algorithm 1, line 7): SAM when ``q >= mu + c * sigma``, else SGD.

    Example::

        >>> aesam_use_sam(5.0, 1.0, 4.0, 1.0), aesam_use_sam(2.0, 1.0, 4.0, 1.0)
        (True, False)
    """
    return q >= mu + c * math.sqrt(var)


def mesa_kl(logits: Tensor, ema_logits: Tensor, tau: float) -> Tensor:
    """Per-sample ``KL(softmax(z_ema / tau) || softmax(z / tau))``: the term of MESA's Eq. 7.

    Example::

        >>> z = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
        >>> mesa_kl(z, z, 1.5)
        tensor([0., 0.])
    """
    log_q = F.log_softmax(logits / tau, dim=-1)
    log_p = F.log_softmax(ema_logits.detach() / tau, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def mesa_loss(losses: Tensor, logits: Tensor, ema_logits: Tensor, lam: float, tau: float) -> Tensor:
    """MESA's loss (Eq. 7): ``mean_i l_i + lam * tau^2 * mean_i KL_i``.

    ``tau^2`` keeps the gradient of the KL term on the scale of the cross-entropy's, as in
    knowledge distillation.

    Example::

        >>> z = torch.tensor([[1.0, 2.0]])
        >>> mesa_loss(torch.tensor([0.5]), z, z, lam=0.8, tau=1.5)
        tensor(0.5000)
    """
    return losses.mean() + (lam * tau * tau) * mesa_kl(logits, ema_logits, tau).mean()


@torch.no_grad()
def ema_update_(ema: Sequence[Tensor], current: Sequence[Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * current`` in place (MESA Eq. 6); non-float tensors are copied.

    Example::

        >>> ema = [torch.tensor([0.0]), torch.tensor([1])]
        >>> ema_update_(ema, [torch.tensor([1.0]), torch.tensor([5])], decay=0.75)
        >>> ema
        [tensor([0.2500]), tensor([5])]
    """
    for e, c in zip(ema, current):
        if e.is_floating_point():
            e.mul_(decay).add_(c.detach().to(e.dtype), alpha=1.0 - decay)
        else:
            e.copy_(c)


__all__ = [
    "aesam_coefficient",
    "aesam_moments",
    "aesam_use_sam",
    "ema_update_",
    "esam_keep_mask",
    "esam_radius",
    "esam_select",
    "esam_subset_size",
    "mesa_kl",
    "mesa_loss",
    "squared_norm",
]
