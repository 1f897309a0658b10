"""The pure math of Eq. 3 against hand-written formulas."""

from __future__ import annotations

import pytest
import torch

from lightning_asyncsam.functional import (
    EPS,
    cosine_similarity,
    global_norm,
    perturb_,
    perturbation_scale,
    restore_,
    scale_to_radius_,
)


def _tensors(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g, dtype=dtype), torch.randn(5, generator=g, dtype=dtype)]


def test_global_norm_is_the_norm_of_the_concatenation() -> None:
    ts = _tensors()
    assert torch.allclose(global_norm(ts), torch.cat([t.flatten() for t in ts]).norm(), atol=1e-14, rtol=0)


def test_global_norm_needs_tensors() -> None:
    with pytest.raises(ValueError, match="no tensors"):
        global_norm([])


def test_perturbation_is_rho_along_the_unit_direction() -> None:
    w, d = _tensors(seed=1), _tensors(seed=2)
    w0 = [x.clone() for x in w]
    flat_d = torch.cat([x.flatten() for x in d])
    backup = [torch.empty_like(x) for x in w]
    norm = scale_to_radius_(d, rho=0.05)
    perturb_(w, d, backup=backup)
    expected = torch.cat([x.flatten() for x in w0]) + 0.05 * flat_d / (flat_d.norm() + EPS)
    assert torch.allclose(torch.cat([x.flatten() for x in w]), expected, atol=1e-15, rtol=0)
    assert torch.allclose(norm, flat_d.norm())
    step = torch.cat([(a - b).flatten() for a, b in zip(w, w0)])
    assert torch.isclose(step.norm(), torch.tensor(0.05, dtype=torch.float64), atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(backup, w0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_restore_is_exact_in_every_dtype(dtype) -> None:
    w, d = _tensors(dtype, 3), _tensors(dtype, 4)
    w0 = [x.clone() for x in w]
    backup = [torch.empty_like(x) for x in w]
    scale_to_radius_(d, rho=0.7)
    perturb_(w, d, backup=backup)
    assert not all(torch.equal(a, b) for a, b in zip(w, w0))
    restore_(w, backup)
    assert all(torch.equal(a, b) for a, b in zip(w, w0))  # bit for bit, unlike w + e - e


def test_zero_direction_leaves_weights_unchanged() -> None:
    w = _tensors()
    w0 = [x.clone() for x in w]
    zero = [torch.zeros_like(x) for x in w]
    assert scale_to_radius_(zero, rho=0.1) == 0
    perturb_(w, zero, backup=[torch.empty_like(x) for x in w])
    assert all(torch.equal(a, b) for a, b in zip(w, w0))


def test_perturbation_scale() -> None:
    assert torch.isclose(perturbation_scale(torch.tensor(4.0), 2.0), torch.tensor(0.5))


def test_cosine_similarity() -> None:
    a, b = _tensors(seed=5), _tensors(seed=6)
    fa, fb = torch.cat([x.flatten() for x in a]), torch.cat([x.flatten() for x in b])
    assert torch.isclose(cosine_similarity(a, b), torch.nn.functional.cosine_similarity(fa, fb, dim=0))
    assert torch.isclose(cosine_similarity(a, a), torch.tensor(1.0, dtype=torch.float64))
    assert torch.isclose(cosine_similarity(a, [-x for x in a]), torch.tensor(-1.0, dtype=torch.float64))
