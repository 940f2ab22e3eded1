"""Check the real accelerator as the first step of a session.

Kaggle has given a P100 to a notebook that asked only for "a GPU", run a TPU
request on the standard image, and ``NvidiaTeslaT4`` means two T4 cards. A
wrong device is cheapest to catch before any training starts, so
``check_accelerator`` compares the devices torch reports with the expected Kaggle
``machine_shape`` and raises AcceleratorMismatchError at once.

Expectations per machine shape:

- ``NvidiaTeslaT4``: 2 CUDA devices named "T4";
- ``NvidiaTeslaP100``: 1 CUDA device named "P100" (compute capability 6.0),
  which the current default Kaggle image's torch build no longer supports,
  so the check also requires ``sm_60`` in ``torch.cuda.get_arch_list()``;
- ``NvidiaL4``: at least 1 CUDA device named "L4";
- ``TpuV5E8``: a TPU visible to torch_xla or jax;
- ``none`` (or nothing set): no check.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field

from kaggle_relay.errors import AcceleratorMismatchError, ConfigError

log = logging.getLogger(__name__)

ACCELERATOR_ENV = "KAGGLE_RELAY_ACCELERATOR"


@dataclass(frozen=True)
class GpuExpectation:
    """Expected CUDA devices of one machine shape: a name fragment and a count (exact or minimum)."""

    name: str
    count: int
    exact_count: bool = True


GPU_SHAPES = {
    "NvidiaTeslaT4": GpuExpectation("T4", 2),
    "NvidiaTeslaP100": GpuExpectation("P100", 1),
    "NvidiaL4": GpuExpectation("L4", 1, exact_count=False),
}
TPU_SHAPES = ("TpuV5E8",)
NO_ACCELERATOR = ("", "none", "None", "cpu")


@dataclass
class AcceleratorReport:
    """The device a session runs on, as found by ``check_accelerator``."""

    expected: str
    kind: str = "cpu"
    names: list[str] = field(default_factory=list)
    capabilities: list[tuple[int, int]] = field(default_factory=list)
    framework: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        if not self.names:
            return (
                f"CPU only ({self.framework})"
                if self.kind == "cpu"
                else f"no {self.kind} device ({self.framework})"
            )
        if self.capabilities:
            pairs = zip(self.names, self.capabilities, strict=True)
            devices = ", ".join(
                f"{name} (capability {major}.{minor})" for name, (major, minor) in pairs
            )
        else:
            devices = ", ".join(self.names)
        return f"{self.count} x {self.kind}: {devices} ({self.framework})"


def check_accelerator(expected: str | None = None) -> AcceleratorReport:
    """Verify that the session runs on the ``expected`` Kaggle machine shape.

    ``expected`` defaults to ``KAGGLE_RELAY_ACCELERATOR``. Raises
    AcceleratorMismatchError naming what was expected and what was found, and
    ConfigError for a machine shape this runtime does not know.
    """
    if expected is None:
        expected = os.environ.get(ACCELERATOR_ENV, "")
    if expected in NO_ACCELERATOR:
        log.debug("no accelerator expected: nothing to check")
        return AcceleratorReport(expected="none")
    if expected in GPU_SHAPES:
        return _check_gpu(expected, GPU_SHAPES[expected])
    if expected in TPU_SHAPES:
        return _check_tpu(expected)
    known = ", ".join([*GPU_SHAPES, *TPU_SHAPES, "none"])
    raise ConfigError(
        f"unknown accelerator {expected!r}; known machine shapes: {known}",
        field=ACCELERATOR_ENV,
        hint="set accelerator in relay.toml to one of the known machine shapes",
    )


def inspect_cuda(expected: str) -> AcceleratorReport:
    """Return the CUDA devices torch reports. Imports torch."""
    import torch

    report = AcceleratorReport(
        expected=expected, kind="cuda", framework=f"torch {torch.__version__}"
    )
    if not torch.cuda.is_available():
        report.kind = "cpu"
        return report
    for index in range(torch.cuda.device_count()):
        report.names.append(torch.cuda.get_device_name(index))
        report.capabilities.append(tuple(torch.cuda.get_device_capability(index)))  # type: ignore[arg-type]
    return report


def _check_gpu(expected: str, want: GpuExpectation) -> AcceleratorReport:
    report = inspect_cuda(expected)
    found = report.describe()
    wanted = f"{expected} ({want.count}{'' if want.exact_count else '+'} x {want.name})"
    wrong = [name for name in report.names if want.name not in name]
    count_ok = report.count == want.count if want.exact_count else report.count >= want.count
    if report.count == 0 or wrong or not count_ok:
        raise AcceleratorMismatchError(wanted, found)

    _check_arch_supported(report)
    _check_first_cuda_call(report)
    log.info("accelerator check passed: %s", found)
    return report


def _check_arch_supported(report: AcceleratorReport) -> None:
    import torch

    arches = torch.cuda.get_arch_list()
    for major, minor in set(report.capabilities):
        if f"sm_{major}{minor}" not in arches and not _has_ptx_for(arches, major, minor):
            raise AcceleratorMismatchError(
                report.expected,
                f"{report.describe()}, but this torch build has kernels only for {', '.join(arches)}: "
                f"capability {major}.{minor} is not supported (pin an older Kaggle image, or use NvidiaTeslaT4)",
            )


def _has_ptx_for(arches: list[str], major: int, minor: int) -> bool:
    # PTX ("compute_XY") is compiled on the fly for any newer card, never for an older one.
    wanted = major * 10 + minor
    return any(
        arch.startswith("compute_") and int(arch.removeprefix("compute_")) <= wanted
        for arch in arches
        if arch.removeprefix("compute_").isdigit()
    )


def _check_first_cuda_call(report: AcceleratorReport) -> None:
    # "no kernel image is available for execution on the device" appears only on the first real kernel.
    import torch

    try:
        value = (torch.ones(1, device="cuda") + 1).item()
    except RuntimeError as exc:
        raise AcceleratorMismatchError(
            report.expected, f"{report.describe()}, first CUDA call failed: {exc}"
        ) from exc
    if value != 2.0:
        raise AcceleratorMismatchError(
            report.expected, f"{report.describe()}, first CUDA call returned {value}"
        )


def _check_tpu(expected: str) -> AcceleratorReport:
    report = AcceleratorReport(expected=expected, kind="tpu")
    for check in (_tpu_devices_torch_xla, _tpu_devices_jax):
        framework, names = check()
        if names:
            report.framework = framework
            report.names = names
            log.info("accelerator check passed: %s", report.describe())
            return report
        report.notes.append(framework)
    raise AcceleratorMismatchError(expected, "no TPU visible: " + "; ".join(report.notes))


def _tpu_devices_torch_xla() -> tuple[str, list[str]]:
    try:
        runtime = importlib.import_module("torch_xla.runtime")
    except ImportError as exc:
        return f"torch_xla does not import ({exc})", []
    try:
        kind = str(runtime.device_type())
        count = int(runtime.global_runtime_device_count())
    except Exception as exc:  # noqa: BLE001 - any runtime failure means "no TPU", and the message says why
        return f"torch_xla sees no device ({exc})", []
    if kind.upper() != "TPU":
        return f"torch_xla device type is {kind}", []
    return "torch_xla", [kind] * count


def _tpu_devices_jax() -> tuple[str, list[str]]:
    try:
        jax = importlib.import_module("jax")
    except ImportError as exc:
        return f"jax does not import ({exc})", []
    try:
        devices = [device for device in jax.devices() if device.platform == "tpu"]
    except RuntimeError as exc:
        return f"jax sees no TPU ({exc})", []
    return "jax", [str(getattr(device, "device_kind", "TPU")) for device in devices]
