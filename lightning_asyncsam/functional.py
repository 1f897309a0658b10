"""The tensor math of SAM and AsyncSAM as small pure functions (no Lightning, no processes).

Notation follows the paper (Jo, Lim, Lee, Eq. 3 and Algorithm 1):

    w_{t+1} = w_t - eta * grad L_t^b( w_t + r * g_{t-1} / ||g_{t-1}|| ),   g_{t-1} = grad L_{t-1}^{b'}(w_{t-1})

Every function works on lists of tensors (one per parameter) with ``torch._foreach_*`` kernels, so
the per-step cost is a handful of kernel launches, independent of the number of parameters.
"""

from __future__ import annotations

import math

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
def scale_to_radius_(direction: Sequence[Tensor], rho: float, eps: float = EPS,
                     storage: Sequence[Tensor] | None = None) -> Tensor:
    """Turn a gradient d into the ascent step ``e = rho * d / (||d|| + eps)`` of Eq. 3, in place.

    Done once per optimizer step (every accumulation micro-batch reuses e), with no allocation
    beyond the norm, and no ``.item()``: the scale stays on the device. A non-finite ``||d||``
    (a NaN or an infinity anywhere in d) leaves e at zero (:func:`zero_if_nonfinite_`): that step's
    descent runs at the unperturbed weights instead of writing NaN into them.

    Args:
        direction: the ascent gradient d (for AsyncSAM the stale ``g_{t-1}``); overwritten with e.
        rho: the perturbation radius r.
        eps: guards the division when ``||d|| = 0``.
        storage: flat tensors that hold ``direction`` as views; zeroing them takes one kernel per
            flat tensor instead of one per parameter. Default: ``direction`` itself.

    Returns:
        ``||d||`` as a 0-dim tensor (for diagnostics; not finite when the step was zeroed).

    Example::

        >>> d = [torch.tensor([3.0, 4.0])]
        >>> scale_to_radius_(d, rho=0.5)
        tensor(5.)
        >>> d[0]
        tensor([0.3000, 0.4000])
        >>> bad = [torch.tensor([3.0, float("inf")])]
        >>> scale_to_radius_(bad, rho=0.5), bad[0]
        (tensor(inf), tensor([0., 0.]))
    """
    direction = list(direction)
    norm = global_norm(direction)
    torch._foreach_mul_(direction, perturbation_scale(norm, rho, eps).to(direction[0].dtype))
    zero_if_nonfinite_(direction if storage is None else storage, norm)
    return norm


@torch.no_grad()
def zero_if_nonfinite_(tensors: Sequence[Tensor], norm: Tensor) -> Tensor:
    """Overwrite ``tensors`` with zeros when ``norm`` is not finite, without a host sync.

    A NaN or an infinity anywhere in an ascent gradient makes its norm non-finite, and ``0 * nan``
    is still ``nan``: so the step is filled with zeros instead (``masked_fill_`` with a 0-dim
    mask stays on the device). The descent of that step then runs at the unperturbed weights,
    which is plain SGD for one step, instead of writing NaN into every weight.

    Args:
        tensors: the ascent step (per parameter, or flat buffers holding them: fewer launches).
        norm: the global norm of ``tensors`` from :func:`global_norm`.

    Returns:
        A 0-dim bool tensor, True where the step was finite and kept.

    Example::

        >>> step = [torch.tensor([1.0, float("nan")])]
        >>> zero_if_nonfinite_(step, global_norm(step))
        tensor(False)
        >>> step[0]
        tensor([0., 0.])
    """
    finite = torch.isfinite(norm)
    bad = ~finite
    for t in tensors:
        t.masked_fill_(bad, 0)
    return finite


@torch.no_grad()
def adaptive_ascent_step_(
    direction: Sequence[Tensor],
    params: Sequence[Tensor],
    adaptive: Sequence[bool],
    rho: float,
    eta: float,
    eps: float = EPS,
) -> Tensor:
    """ASAM's step ``e = rho * T^2 g / ||T g||`` (Kwon et al., 2021, Eq. 9 with their T_w), in place.

    ``T = |w| + eta`` for the parameters flagged in ``adaptive`` (SamsungLabs/ASAM: those whose
    name ends in ``weight``) and ``T = 1`` for the others (biases, norm shifts). The scale of the
    weights then decides how far each one moves, so the step is invariant to rescaling a layer.
    A non-finite ``||T g||`` leaves ``direction`` at zero, as in :func:`scale_to_radius_`.

    Args:
        direction: the ascent gradient g (for AsyncSAM the stale ``g_{t-1}``); overwritten with e.
        params: the current weights w that T is taken from (for AsyncSAM, ``w_t``).
        adaptive: one flag per parameter: True where T = |w| + eta.
        rho: the perturbation radius.
        eta: the offset that keeps T > 0 at zero weights.
        eps: guards the division when the norm is 0.

    Returns:
        ``||T g||`` as a 0-dim tensor.

    Example::

        >>> g, w = [torch.tensor([3.0, 4.0])], [torch.tensor([1.0, 1.0])]
        >>> adaptive_ascent_step_(g, w, [True], rho=1.0, eta=0.0)
        tensor(5.)
        >>> g[0]
        tensor([0.6000, 0.8000])
    """
    direction = list(direction)
    scaled = [d for d, a in zip(direction, adaptive) if a]
    if scaled:
        t = torch._foreach_abs([p for p, a in zip(params, adaptive) if a])
        torch._foreach_add_(t, eta)
        torch._foreach_mul_(scaled, t)  # T g
    norm = global_norm(direction)
    if scaled:
        torch._foreach_mul_(scaled, t)  # T^2 g
    torch._foreach_mul_(direction, perturbation_scale(norm, rho, eps).to(direction[0].dtype))
    zero_if_nonfinite_(direction, norm)
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


def climb_(params: Sequence[Tensor], step: Sequence[Tensor]) -> None:
    """Climb from w to ``w + e`` in place (line 5 of Algorithm 1) where an exact copy of w is kept elsewhere.

    :func:`perturb_` without its backup copy: AsyncSAM's published ``w_t`` (the copy the worker
    reads) already is one, so :func:`restore_` can copy from it. No ``torch.no_grad()`` of its own
    (a few microseconds per call in the middle of a step): pass tensors that do not require grad
    (AsyncSAM's flat parameter buffers), or call it under ``torch.no_grad()``.

    Example::

        >>> w = [torch.tensor([1.0, 1.0])]
        >>> climb_(w, [torch.tensor([0.3, 0.4])])
        >>> w[0]
        tensor([1.3000, 1.4000])
    """
    torch._foreach_add_(list(params), list(step))


def restore_(params: Sequence[Tensor], backup: Sequence[Tensor]) -> None:
    """Return ``params`` to w exactly by copying the backup taken in :func:`perturb_`.

    After this, the optimizer applies the descent gradient (taken at the perturbed point) to the
    original weights: the update ``w_{t+1} = w_t - eta * g_t`` of line 10 of Algorithm 1.
    Copying, not subtracting e, makes the restore exact in every dtype. Like :func:`climb_`, it
    has no ``torch.no_grad()`` of its own: parameters that require grad need the caller's.

    Example::

        >>> w = [torch.tensor([1.0])]
        >>> saved = [torch.empty(1)]
        >>> perturb_(w, [torch.tensor([0.1])], backup=saved)
        >>> restore_(w, saved)
        >>> w[0]
        tensor([1.])
    """
    torch._foreach_copy_(list(params), list(backup))


def known_norm_cosine_similarity(a: Tensor, b: Tensor, a_norm: float, eps: float = EPS) -> float:
    """:func:`cosine_similarity` of two flat gradients where ``||a||`` is already known (AsyncSAM's e has norm rho).

    Two dot products, where :func:`gram_cosine_similarity` needs ``a`` and ``b`` copied into one
    matrix first: on this project's 2-core VM, in the middle of a step, 51 us against 74 us for the
    digits CNN's 24 k parameters. One transfer to the host on a GPU.

    Example::

        >>> round(known_norm_cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), 1.0), 4)
        0.7071
    """
    if a.is_cuda:
        ab, bb = torch.stack((torch.dot(a, b), torch.dot(b, b))).tolist()
    else:
        ab, bb = torch.dot(a, b).item(), torch.dot(b, b).item()
    return ab / (a_norm * math.sqrt(bb) + eps)


def gram_cosine_similarity(pair: Tensor, eps: float = EPS) -> float:
    """:func:`cosine_similarity` of the two rows of ``pair`` (2 x N, each a gradient laid out flat).

    One matrix product gives both norms and the dot product, and one transfer brings the three
    numbers to the host: two operations where a dot product and two norms take six. ``pair``
    must not require grad.

    Example::

        >>> round(gram_cosine_similarity(torch.tensor([[1.0, 0.0], [1.0, 1.0]])), 4)
        0.7071
    """
    (aa, ab), (_, bb) = (pair @ pair.T).tolist()
    return ab / (math.sqrt(aa * bb) + eps)


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
