"""The benchmarks stay runnable: every module imports, and every function they time still exists."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("name", sorted(path.stem for path in BENCH.glob("bench_*.py")))
def test_benchmark_module_has_main(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")

    assert callable(module.main)


def test_turnaround_times_functions_that_exist() -> None:
    from bench.chainbench import TIMED_FUNCTIONS

    for module_name, name, _label in TIMED_FUNCTIONS:
        assert callable(getattr(importlib.import_module(module_name), name, None)), f"{module_name}.{name}"
