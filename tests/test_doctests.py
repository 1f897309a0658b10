"""Every ``Example::`` in the core modules runs and shows what it says."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "logging_steps",
    "batch_free",
    "ascent.mailbox",
    "ascent.flat_params",
    "ascent.mirror",
    "ascent.memory_format",
    "ascent.stream_post",
    "strategies.state",
    "functional",
    "ascent.autotune",
    "ascent.slowdown",
    "ascent.devices",
    "ascent.affinity",
    "ascent.lookahead",
    "ascent.buffers",
    "ascent.launch",
    "ascent.replica",
    "ascent.replica_io",
    "ascent.worker",
    "ascent.callback",
    "strategies.sam",
    "strategies.asyncsam",
    "rules_sam",
    "strategies.descent",
    "strategies.gsam",
    "strategies.looksam",
    "rules_efficient",
    "strategies.efficient_args",
    "strategies.per_sample",
    "strategies.esam",
    "strategies.aesam",
    "strategies.mesa",
    "app.report",
    "app.figures",
    "strategies.process_exit",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(f"lightning_asyncsam.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
