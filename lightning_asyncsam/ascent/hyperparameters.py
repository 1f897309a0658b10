"""The trainer's changing numbers in shared memory: a per-step scheduler, a new epoch, send no message.

The replica's trainer stand-in holds the optimizers' hyperparameters
(:mod:`lightning_asyncsam.ascent.replica`), and a scheduler stepped every optimizer step
(``interval="step"``: a warm-up, ``OneCycleLR``) changes them every step. Sent through the pipe,
that change cost the trainer's thread about 56 µs a step on this project's 2-core VM (pickling, two
system calls, waking the worker), half as much again as all the rest that AsyncSAM adds (the digits
recipe with ``OneCycleLR``: ``asyncsam/overhead_ms`` 195 µs against 130 with a scheduler stepped per
epoch). A new epoch, a message of its own every epoch, cost about 0.1 ms. Here the epoch and the
hyperparameters' numbers live in one shared float64 block, announced by a version count. Which
numbers, in which order (the *layout*), follows from the hyperparameters last sent through the
pipe, on both sides alike: a step that changes numbers alone (a learning rate, a momentum, Adam's
``betas``) writes them in place, and only another change (a new group or key, a flag, a string, more
numbers than the block holds) still travels as a message, which resets the layout.

Example::

    >>> shared = SharedHyperparameters()
    >>> replica = SharedHyperparameters.__new__(SharedHyperparameters)
    >>> replica.__setstate__(shared.__getstate__())  # the worker's copy: the same shared block
    >>> sent = [[{"lr": 0.1, "betas": (0.9, 0.999), "amsgrad": False}]]
    >>> shared.adopt(sent); replica.adopt(sent)  # sent through the pipe, received
    >>> shared.write_numbers([[{"lr": 0.05, "betas": (0.8, 0.999), "amsgrad": False}]], epoch=1)
    True
    >>> groups = [[dict(g) for g in opt] for opt in sent]  # the stand-in's dicts
    >>> replica.apply(groups), groups  # the epoch, and the numbers written into the dicts
    (1, [[{'lr': 0.05, 'betas': (0.8, 0.999), 'amsgrad': False}]])
    >>> replica.apply(groups) is None  # nothing new
    True
    >>> shared.write_numbers([[{"lr": 0.05, "betas": (0.8, 0.999), "amsgrad": True}]], epoch=1)  # a flag: a message
    False
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from typing_extensions import override

from lightning_asyncsam.ascent.shared_block import SharedBlock

CAPACITY = 256  # numbers: 25 param groups of 10 each; a larger layout falls back to messages

Groups = Sequence[Sequence[Mapping[str, Any]]]  # per optimizer, per param group, the hyperparameters
# Where a number goes: (optimizer, group, key, index in a tuple or -1, int or float).
_Position = tuple[int, int, str, int, type]


class SharedHyperparameters(SharedBlock):
    """A version count, the epoch and up to :data:`CAPACITY` numbers in shared memory (see the module's docstring).

    Created in the main process before the worker starts and handed to it as a ``Process``
    argument, as :class:`~lightning_asyncsam.ascent.mailbox.Mailbox` is. Each side calls
    :meth:`adopt` with the hyperparameters that crossed the pipe; then the trainer calls
    :meth:`write_numbers` when they change, and the worker :meth:`apply` before each step.
    """

    def __init__(self) -> None:
        super().__init__(torch.zeros(CAPACITY + 2, dtype=torch.float64).share_memory_())  # version, epoch, numbers

    @override
    def _attach(self) -> None:
        # A ctypes view: numbers read and written as Python floats, no tensor operation per value.
        self._slots = (ctypes.c_double * (CAPACITY + 2)).from_address(self._shared.data_ptr())
        self._skeleton: tuple[Any, ...] | None = None  # the adopted layout; None: none adopted
        self._positions: list[_Position] = []
        self._seen = 0.0  # the version last applied (worker side)

    def adopt(self, groups: Groups) -> None:
        """Take ``groups``, just sent (trainer) or received (worker) through the pipe, as the layout."""
        skeleton, positions, _ = _split(groups)
        fits = len(positions) <= CAPACITY
        self._skeleton = skeleton if fits else None
        self._positions = positions if fits else []
        self._seen = self._slots[0]  # the message carried the current values

    # ----------------------------------------------------------------- the trainer's side
    def write_numbers(self, groups: Groups, epoch: int) -> bool:
        """Write ``epoch`` and ``groups``' numbers in place if nothing else changed since :meth:`adopt`.

        False: something else changed, and a message must carry it.

        ``groups`` may be the optimizers' live ``param_groups`` (their tensors and what the stand-in
        does not carry are skipped, as :func:`plain_hyperparameters` skips them) or dicts as sent.
        """
        skeleton, _, numbers = _split(groups)
        if self._skeleton is None or skeleton != self._skeleton:
            return False
        slots = self._slots
        slots[2:2 + len(numbers)] = numbers
        slots[1] = epoch
        slots[0] += 1.0  # after the numbers: the step's semaphore orders both before the worker's reads
        return True

    # ----------------------------------------------------------------- the worker's side
    def changed(self) -> bool:
        """Whether numbers were written since the last :meth:`apply` (one read, before building anything)."""
        return self._slots[0] != self._seen

    def apply(self, groups: Sequence[Sequence[dict[str, Any]]]) -> int | None:
        """Write the numbers last published into ``groups`` (the stand-in's dicts), if they changed.

        Returns:
            The epoch published with them, or None where nothing was published since the last call.
        """
        slots = self._slots
        version = slots[0]
        if version == self._seen or self._skeleton is None:
            return None
        self._seen = version
        values = slots[2:2 + len(self._positions)]
        tuples: dict[tuple[int, int, str], list[Any]] = {}
        for (i, j, key, index, kind), value in zip(self._positions, values):
            if index < 0:
                groups[i][j][key] = kind(value)
            else:
                tuples.setdefault((i, j, key), list(groups[i][j][key]))[index] = kind(value)
        for (i, j, key), items in tuples.items():
            groups[i][j][key] = tuple(items)
        return int(slots[1])


def plain_hyperparameters(group: Mapping[str, Any]) -> dict[str, Any]:
    """What the replica's stand-in carries of a param group: its plain values, not ``params``.

    Example::

        >>> plain_hyperparameters({"params": [], "lr": 0.1, "betas": (0.9, 0.99), "foreach": None, "x": float("nan")})
        {'lr': 0.1, 'betas': (0.9, 0.99), 'foreach': None}
    """
    return {k: v for k, v in group.items() if k != "params" and _plain(v)}


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, str)) or value is None:
        return True
    if isinstance(value, float):
        return not math.isnan(value)  # NaN != NaN would resend it every step
    return isinstance(value, tuple) and all(_plain(v) for v in value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _split(groups: Groups) -> tuple[tuple[Any, ...], list[_Position], list[float]]:
    """(the structure with every number replaced by its type, where each number goes, the numbers).

    Over the values that :func:`plain_hyperparameters` keeps, so that a live param group and the
    dict sent for it split alike. The trainer runs it on every step at which a scheduler stepped:
    a float, the common value, takes the first branch.
    """
    skeleton: list[Any] = []
    positions: list[_Position] = []
    numbers: list[float] = []
    for i, opt in enumerate(groups):
        for j, group in enumerate(opt):
            for key, value in group.items():
                kind = type(value)
                if kind is float or kind is int:
                    if value != value:  # NaN: not carried (see _plain)
                        continue
                    skeleton.append((i, j, key, kind))
                    positions.append((i, j, key, -1, kind))
                    numbers.append(value)
                elif key == "params" or not _plain(value):
                    continue
                elif _number(value):  # a subclass of int or float
                    skeleton.append((i, j, key, type(value)))
                    positions.append((i, j, key, -1, type(value)))
                    numbers.append(float(value))
                elif isinstance(value, tuple) and value and all(_number(v) for v in value):
                    skeleton.append((i, j, key, tuple(type(v) for v in value)))
                    for index, v in enumerate(value):
                        positions.append((i, j, key, index, type(v)))
                        numbers.append(float(v))
                else:
                    skeleton.append((i, j, key, value))
            skeleton.append((i, j))  # the group's end: a key that moved to the next group changes the skeleton
    return tuple(skeleton), positions, numbers


__all__ = ["CAPACITY", "SharedHyperparameters", "plain_hyperparameters"]
