"""The tensor math of SAM and AsyncSAM as small pure functions (no Lightning, no processes).

Notation follows the paper (Jo, Lim, Lee, Eq. 3 and Algorithm 1):

    w_{t+1} = w_t - eta * grad L_t^b( w_t + r * g_{t-1} / ||g_{t-1}|| ),   g_{t-1} = grad L_{t-1}^{b'}(w_{t-1})

Every function works on lists of tensors (one per parameter) with ``torch._foreach_*`` kernels, so
the per-step cost is a handful of kernel launches, independent of the number of parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Added to the norm in the denominator of Eq. 3, as in Foret et al.'s reference implementation.
EPS = 1e-12


@torch.no_grad()
def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """One L2 norm over all tensors together: ``||g||`` in Eq. 3.

    Args:
        tensors: the per-parameter gradients.

    Returns:
        A 0-dim tensor on the device of the tensors.

    Example::

        >>> global_norm([torch.tensor([3.0]), torch.tensor([4.0])])
        tensor(5.)
    """
    if not tensors:
        raise ValueError("global_norm: got no tensors; expected at least one gradient")
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors), 2.0)), 2.0)


def perturbation_scale(norm: Tensor, rho: float, eps: float = EPS) -> Tensor:
    """The factor ``r / (||g|| + eps)`` that turns a gradient into the ascent step of Eq. 3.

    Example::

        >>> perturbation_scale(torch.tensor(2.0), rho=0.1)
        tensor(0.0500)
    """
    return rho / (norm + eps)


@torch.no_grad()
def scale_to_radius_(direction: Sequence[Tensor], rho: float, eps: float = EPS) -> Tensor:
    """Turn a gradient d into the ascent step ``e = rho * d / (||d|| + eps)`` of Eq. 3, in place.

    Done once per optimizer step (every accumulation micro-batch reuses e), with no allocation
    beyond the norm, and no ``.item()``: the scale stays on the device.

    Args:
        direction: the ascent gradient d (for AsyncSAM the stale ``g_{t-1}``); overwritten with e.
        rho: the perturbation radius r.
        eps: guards the division when ``||d|| = 0``.

    Returns:
        ``||d||`` as a 0-dim tensor (for diagnostics).

    Example::

        >>> d = [torch.tensor([3.0, 4.0])]
        >>> scale_to_radius_(d, rho=0.5)
        tensor(5.)
        >>> d[0]
        tensor([0.3000, 0.4000])
    """
    direction = list(direction)
    norm = global_norm(direction)
    torch._foreach_mul_(direction, perturbation_scale(norm, rho, eps).to(direction[0].dtype))
    return norm


@torch.no_grad()
def perturb_(params: Sequence[Tensor], step: Sequence[Tensor], backup: Sequence[Tensor]) -> None:
    """Climb from w to ``w + e`` in place (line 5 of Algorithm 1); save w in ``backup`` first.

    ``backup`` keeps an exact copy so that :func:`restore_` returns to w bit for bit (a
    subtraction would not, in floating point). ``step`` is e from :func:`scale_to_radius_`.

    Example::

        >>> w = [torch.tensor([1.0, 1.0])]
        >>> saved = [torch.empty(2)]
        >>> perturb_(w, [torch.tensor([0.3, 0.4])], backup=saved)
        >>> w[0], saved[0]
        (tensor([1.3000, 1.4000]), tensor([1., 1.]))
    """
    params = list(params)
    torch._foreach_copy_(list(backup), params)
    torch._foreach_add_(params, list(step))


@torch.no_grad()
def restore_(params: Sequence[Tensor], backup: Sequence[Tensor]) -> None:
    """Return ``params`` to w exactly by copying the backup taken in :func:`perturb_`.

    After this, the optimizer applies the descent gradient (taken at the perturbed point) to the
    original weights: the update ``w_{t+1} = w_t - eta * g_t`` of line 10 of Algorithm 1.
    Copying, not subtracting e, makes the restore exact in every dtype.

    Example::

        >>> w = [torch.tensor([1.0])]
        >>> saved = [torch.empty(1)]
        >>> perturb_(w, [torch.tensor([0.1])], backup=saved)
        >>> restore_(w, saved)
        >>> w[0]
        tensor([1.])
    """
    torch._foreach_copy_(list(params), list(backup))


@torch.no_grad()
def cosine_similarity(a: Sequence[Tensor], b: Sequence[Tensor], eps: float = EPS) -> Tensor:
    """Cosine between two gradients flattened over all parameters (the paper's Figure 1).

    Example::

        >>> cosine_similarity([torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])])
        tensor(0.7071)
    """
    a, b = list(a), list(b)
    dot = torch.stack([torch.sum(x * y.to(x.dtype)) for x, y in zip(a, b)]).sum()
    return dot / (global_norm(a) * global_norm(b) + eps)
