"""Tests of the accelerator check on this CPU-only machine."""

from __future__ import annotations

import pytest

from kaggle_relay.errors import AcceleratorMismatchError, ConfigError
from kaggle_relay.runtime.device import check_accelerator


@pytest.mark.parametrize("expected", ["none", ""])
def test_accelerator_none_passes(expected: str) -> None:
    report = check_accelerator(expected)
    assert report.expected == "none"
    assert report.count == 0


def test_accelerator_default_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_RELAY_ACCELERATOR", "NvidiaTeslaT4")
    with pytest.raises(AcceleratorMismatchError) as caught:
        check_accelerator()
    assert caught.value.expected.startswith("NvidiaTeslaT4")


def test_accelerator_unset_environment_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAGGLE_RELAY_ACCELERATOR", raising=False)
    assert check_accelerator().expected == "none"


@pytest.mark.parametrize(
    ("shape", "expected_text"),
    [("NvidiaTeslaT4", "2 x T4"), ("NvidiaTeslaP100", "1 x P100"), ("NvidiaL4", "1+ x L4")],
)
def test_accelerator_gpu_shape_fails_on_cpu(shape: str, expected_text: str) -> None:
    with pytest.raises(AcceleratorMismatchError) as caught:
        check_accelerator(shape)
    message = str(caught.value)
    assert shape in message
    assert expected_text in message
    assert "CPU only" in message
    assert "torch" in caught.value.found


def test_accelerator_tpu_shape_fails_without_tpu() -> None:
    with pytest.raises(AcceleratorMismatchError) as caught:
        check_accelerator("TpuV5E8")
    assert "no TPU visible" in caught.value.found
    assert "torch_xla" in caught.value.found
    assert "jax" in caught.value.found


def test_accelerator_unknown_shape_is_config_error() -> None:
    with pytest.raises(ConfigError, match="NvidiaTeslaT4"):
        check_accelerator("BigGpu")
