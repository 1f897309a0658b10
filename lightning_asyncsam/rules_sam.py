"""The tensor math of GSAM and LookSAM as small pure functions (no Lightning, no processes).

Both rules reshape the descent gradient with the ascent gradient g = grad L(w; B) of the same
step (SAM's e and ASAM's e are :func:`~lightning_asyncsam.functional.scale_to_radius_` and
:func:`~lightning_asyncsam.functional.adaptive_ascent_step_`):

* GSAM (Zhuang et al., 2022, Algorithm 1): with g_p = grad L(w + e; B),
  ``g_perp = g - (<g, g_p> / ||g_p||^2) g_p`` and ``d = g_p - alpha g_perp``.
* LookSAM (Liu et al., 2022, Algorithm 1): every k steps, with g_s = grad L(w + e),
  ``g_v = g_s - (<g_s, g> / ||g||^2) g`` and ``d = g_s``; in between, ``d = g + alpha (||g|| / ||g_v||) g_v``.

Norms and inner products run over all parameters together, like ``||g||`` in SAM. Every function
works on lists of tensors (one per parameter) and stays on the device: no ``.item()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_asyncsam.functional import EPS, global_norm


@torch.no_grad()
def inner(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """``<a, b>`` over all parameters together: the inner products of GSAM's and LookSAM's projections.

    Example::

        >>> inner([torch.tensor([1.0, 2.0]), torch.tensor([3.0])], [torch.tensor([1.0, 1.0]), torch.tensor([2.0])])
        tensor(9.)
    """
    if not a:
        raise ValueError("inner: got no tensors; expected at least one gradient")
    return torch.stack([torch.sum(x * y) for x, y in zip(a, b)]).sum()


@torch.no_grad()
def gsam_direction_(grad: Sequence[Tensor], ascent: Sequence[Tensor], alpha: float, eps: float = EPS) -> None:
    """Turn g_p into GSAM's descent direction ``d = g_p - alpha g_perp`` in place (Zhuang et al., Algorithm 1).

    ``g_perp = g - c g_p`` with ``c = <g, g_p> / ||g_p||^2`` is the part of the ascent gradient g
    orthogonal to the perturbed gradient g_p. Descending along ``-g_perp`` as well lowers the
    surrogate gap without changing the perturbed loss to first order. Written as
    ``d = (1 + alpha c) g_p - alpha g``: two fused kernels, no temporary per parameter.

    Args:
        grad: g_p, the gradient at the perturbed weights (``.grad``); overwritten with d.
        ascent: g, the gradient at the unperturbed weights on the same batch.
        alpha: GSAM's alpha; 0 gives SAM.
        eps: guards the division when ``||g_p|| = 0``.

    Example::

        >>> g_p, g = [torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]
        >>> gsam_direction_(g_p, g, alpha=0.5)  # g_perp = [0, 1]
        >>> g_p[0]
        tensor([ 1.0000, -0.5000])
    """
    grad, ascent = list(grad), list(ascent)
    coef = inner(ascent, grad) / (global_norm(grad) ** 2 + eps)
    torch._foreach_mul_(grad, (1.0 + alpha * coef).to(grad[0].dtype))
    torch._foreach_add_(grad, ascent, alpha=-alpha)


@torch.no_grad()
def looksam_orthogonal_(g_v: Sequence[Tensor], g_s: Sequence[Tensor], g: Sequence[Tensor], eps: float = EPS) -> Tensor:
    """Store LookSAM's ``g_v = g_s - (<g_s, g> / ||g||^2) g`` in ``g_v`` (Liu et al., Algorithm 1, at t mod k = 0).

    g_v is the part of the SAM gradient g_s orthogonal to the plain gradient g: the direction that
    SAM adds and that LookSAM reuses for the next k - 1 steps. When the new g_v is not finite (a
    NaN or an infinity in g or g_s), the previous g_v is kept, chosen on the device with
    ``torch.where``: a corrupt batch must not poison the steps that reuse it.

    Args:
        g_v: the kept g_v; overwritten when the new one is finite.
        g_s: the gradient at the perturbed weights (``.grad`` at a SAM step).
        g: the gradient at the unperturbed weights that built the perturbation.
        eps: guards the division when ``||g|| = 0``.

    Returns:
        A 0-dim bool tensor: True where g_v was replaced.

    Example::

        >>> g_v = [torch.zeros(2)]
        >>> looksam_orthogonal_(g_v, g_s=[torch.tensor([1.0, 2.0])], g=[torch.tensor([1.0, 0.0])])
        tensor(True)
        >>> g_v[0]
        tensor([0., 2.])
    """
    g_s, g = list(g_s), list(g)
    coef = inner(g_s, g) / (global_norm(g) ** 2 + eps)
    new = torch._foreach_mul(g, -coef.to(g[0].dtype))
    torch._foreach_add_(new, g_s)
    finite = torch.isfinite(global_norm(new))
    for kept, fresh in zip(g_v, new):
        kept.copy_(torch.where(finite, fresh, kept))
    return finite


@torch.no_grad()
def looksam_reuse_(grad: Sequence[Tensor], g_v: Sequence[Tensor], alpha: float, eps: float = EPS) -> None:
    """Turn g into LookSAM's ``d = g + alpha (||g|| / ||g_v||) g_v`` in place (Liu et al., Algorithm 1, t mod k != 0).

    The kept orthogonal part g_v, rescaled to the size of the current gradient, stands in for
    SAM's second pass. A zero g_v (none kept yet) leaves g unchanged: a plain SGD step.

    Args:
        grad: g, the gradient at the unperturbed weights (``.grad``); overwritten with d.
        g_v: the orthogonal part kept from the last SAM step.
        alpha: LookSAM's alpha.
        eps: guards the division when ``||g_v|| = 0``.

    Example::

        >>> g = [torch.tensor([3.0, 4.0])]
        >>> looksam_reuse_(g, [torch.tensor([0.0, 2.0])], alpha=0.5)  # ||g|| / ||g_v|| = 2.5
        >>> g[0]
        tensor([3.0000, 6.5000])
    """
    grad, g_v = list(grad), list(g_v)
    scale = alpha * global_norm(grad) / (global_norm(g_v) + eps)
    torch._foreach_add_(grad, torch._foreach_mul(g_v, scale.to(g_v[0].dtype)))


__all__ = ["gsam_direction_", "inner", "looksam_orthogonal_", "looksam_reuse_"]
