"""Every ``Example::`` in the core modules runs and shows what it says."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "functional",
    "ascent.autotune",
    "ascent.affinity",
    "ascent.lookahead",
    "ascent.buffers",
    "ascent.worker",
    "ascent.callback",
    "strategies.sam",
    "strategies.asyncsam",
    "strategies.process_exit",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(f"lightning_asyncsam.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
