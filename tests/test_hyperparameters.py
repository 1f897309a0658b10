"""The optimizers' numbers in shared memory (lightning_asyncsam.ascent.hyperparameters): what crosses in place,
what must still travel as a message. The per-step scheduler's fit is in tests/test_replica.py."""

from __future__ import annotations

from multiprocessing.reduction import ForkingPickler

import torch
import torch.multiprocessing  # noqa: F401 - registers the reductions that share tensors instead of copying them

from lightning_asyncsam.ascent.hyperparameters import CAPACITY, SharedHyperparameters, plain_hyperparameters


def _pair(sent):
    trainer_side = SharedHyperparameters()
    worker_side = ForkingPickler.loads(ForkingPickler.dumps(trainer_side))  # as a Process argument: the same block
    trainer_side.adopt(sent)
    worker_side.adopt(sent)
    return trainer_side, worker_side


def test_numbers_alone_cross_in_place_with_their_types() -> None:
    sent = [[{"lr": 0.1, "betas": (0.9, 0.999), "warmup": 3, "nesterov": False}], [{"lr": 1.0, "name": "b"}]]
    trainer_side, worker_side = _pair(sent)
    new = [[{"lr": 0.2, "betas": (0.5, 0.999), "warmup": 4, "nesterov": False}], [{"lr": 3.0, "name": "b"}]]
    assert trainer_side.write_numbers(new, epoch=3)
    groups = [[dict(g) for g in opt] for opt in sent]
    assert worker_side.apply(groups) == 3
    assert groups == new and type(groups[0][0]["warmup"]) is int and type(groups[0][0]["betas"]) is tuple
    groups[0][0]["lr"] = -1.0
    assert worker_side.apply(groups) is None  # nothing new was written: the stand-in's dicts are left alone
    assert groups[0][0]["lr"] == -1.0


def test_any_other_change_needs_a_message() -> None:
    sent = [[{"lr": 0.1, "nesterov": False}, {"lr": 0.2}]]
    trainer_side, _ = _pair(sent)
    changes = {
        "a flag": [[{"lr": 0.1, "nesterov": True}, {"lr": 0.2}]],
        "a key": [[{"lr": 0.1, "nesterov": False, "x": 1.0}, {"lr": 0.2}]],
        "a key moved groups": [[{"lr": 0.1}, {"lr": 0.2, "nesterov": False}]],
        "a group": [[{"lr": 0.1, "nesterov": False}, {"lr": 0.2}, {"lr": 0.3}]],
        "a float became an int": [[{"lr": 1, "nesterov": False}, {"lr": 0.2}]],
    }
    for what, groups in changes.items():
        assert not trainer_side.write_numbers(groups, epoch=0), what
    assert trainer_side.write_numbers([[{"lr": 0.5, "nesterov": False}, {"lr": 0.2}]], epoch=1)


def test_live_param_groups_split_as_the_dicts_sent_for_them() -> None:
    """The trainer passes the optimizers' own param_groups: params, tensors and NaN are skipped as in the message."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    opt.param_groups[0]["extra"] = torch.ones(1)  # not carried
    opt.param_groups[0]["unset"] = float("nan")  # not carried
    sent = [[plain_hyperparameters(g) for g in opt.param_groups]]
    assert "params" not in sent[0][0] and "extra" not in sent[0][0] and "unset" not in sent[0][0]
    trainer_side, worker_side = _pair(sent)
    opt.param_groups[0]["lr"] = 0.05
    assert trainer_side.write_numbers([opt.param_groups], epoch=0)
    groups = [[dict(g) for g in o] for o in sent]
    worker_side.apply(groups)
    assert groups[0][0]["lr"] == 0.05 and groups[0][0]["momentum"] == 0.9


def test_a_layout_beyond_the_block_falls_back_to_messages() -> None:
    sent = [[{f"k{i}": float(i) for i in range(CAPACITY + 1)}]]
    trainer_side, worker_side = _pair(sent)
    changed = [[{f"k{i}": float(i) + 1 for i in range(CAPACITY + 1)}]]
    assert not trainer_side.write_numbers(changed, epoch=0)
    groups = [[dict(g) for g in opt] for opt in sent]
    assert worker_side.apply(groups) is None
    assert groups == sent
