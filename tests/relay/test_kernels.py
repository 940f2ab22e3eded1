"""Kernels: metadata checks without a server, then push, status, waits and outputs
through the real kaggle client against the emulator."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

from kaggle_relay.errors import (
    ConfigError,
    KaggleRejectedError,
    KaggleUnavailableError,
    KernelRunError,
    ManifestError,
    WaitTimeoutError,
)
from kaggle_relay.relay import client, kernels
from kaggle_relay.relay.kernels import KernelStatus
from kaggle_relay.relay.refs import KernelRef
from kaggle_relay.runtime.manifest import MANIFEST_NAME
from kaggle_relay.runtime.validate import known_sha256
from tests.relay import emulated
from tests.relay.emulated import USER, script_kernel

relay_api = emulated.relay_api

QUICK = "print('quick run')\n"
SLOW = "import time\ntime.sleep(3)\n"
WRITES_CHECKPOINT = """
import os, pathlib
folder = pathlib.Path(os.environ["KAGGLE_RELAY_KAGGLE_ROOT"]) / "working" / "checkpoints"
folder.mkdir(parents=True, exist_ok=True)
(folder / "ckpt-step000100.pt").write_bytes(b"x" * 1000)
print("saved")
"""
FAILS = "raise SystemExit('training diverged')\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# --- statuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["COMPLETE", "complete", "KERNEL_WORKER_STATUS_COMPLETE", "KernelWorkerStatus.COMPLETE", KernelWorkerStatus.COMPLETE],
)
def test_status_parses_every_client_spelling(spelling: object) -> None:
    assert KernelStatus.parse(spelling) is KernelStatus.COMPLETE


def test_terminal_and_active_states() -> None:
    assert {status for status in KernelStatus if status.is_terminal} == {
        KernelStatus.COMPLETE,
        KernelStatus.ERROR,
        KernelStatus.CANCEL_ACKNOWLEDGED,
    }
    assert KernelStatus.RUNNING.is_active
    assert KernelStatus.QUEUED.is_active
    assert not KernelStatus.ERROR.is_active


def test_unknown_status_is_an_error() -> None:
    with pytest.raises(ValueError, match="PAUSED"):
        KernelStatus.parse("PAUSED")


# --- metadata (no server) ----------------------------------------------------


def metadata_error(tmp_path: Path, code: str = QUICK, username: str = USER, **metadata: Any) -> ConfigError:
    folder = script_kernel(tmp_path, "train-digits", code, **metadata)
    with pytest.raises(ConfigError) as caught:
        kernels.validate_kernel_metadata(folder, username=username)
    return caught.value


def test_valid_metadata_gets_explicit_booleans(tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK)
    meta = json.loads((folder / "kernel-metadata.json").read_text(encoding="utf-8"))
    for key in ("is_private", "enable_gpu", "enable_tpu", "enable_internet"):
        del meta[key]
    (folder / "kernel-metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    checked = kernels.validate_kernel_metadata(folder, username=USER)
    assert checked["is_private"] is True
    assert checked["enable_gpu"] is False
    assert checked["enable_tpu"] is False
    assert checked["enable_internet"] is False


def test_string_booleans_become_json_booleans(tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK, enable_internet="true", is_private="False")
    checked = kernels.validate_kernel_metadata(folder, username=USER)
    assert checked["enable_internet"] is True
    assert checked["is_private"] is False


def test_integer_boolean_is_rejected(tmp_path: Path) -> None:
    error = metadata_error(tmp_path, enable_gpu=1)
    assert error.field == "enable_gpu"
    assert "JSON boolean" in str(error)


def test_title_with_em_dash_is_rejected(tmp_path: Path) -> None:
    error = metadata_error(tmp_path, title="Train \u2014 Digits")
    assert error.field == "title"
    assert "ASCII" in str(error)


def test_title_that_slugs_elsewhere_is_rejected(tmp_path: Path) -> None:
    error = metadata_error(tmp_path, title="Train Digits Fast")
    assert error.field == "title"
    assert "train-digits-fast" in str(error)


def test_short_kernel_slug_is_rejected(tmp_path: Path) -> None:
    error = metadata_error(tmp_path, id=f"{USER}/abcd", title="Abcd x")
    assert error.field == "id"
    assert "at least 5" in str(error)


def test_other_owner_is_rejected(tmp_path: Path) -> None:
    error = metadata_error(tmp_path, username="someone-else")
    assert error.field == "id"
    assert "someone-else" in str(error)


def test_gpu_without_machine_shape_is_rejected(tmp_path: Path) -> None:
    error = metadata_error(tmp_path, enable_gpu=True)
    assert error.field == "machine_shape"


def test_machine_shape_must_match_booleans(tmp_path: Path) -> None:
    error = metadata_error(tmp_path, machine_shape="TpuV5E8", enable_gpu=True)
    assert error.field == "machine_shape"


def test_retired_p100_is_rejected(tmp_path: Path) -> None:
    error = metadata_error(tmp_path, machine_shape="NvidiaTeslaP100", enable_gpu=True)
    assert error.field == "machine_shape"


def test_web_form_dataset_source_is_rejected(tmp_path: Path) -> None:
    error = metadata_error(tmp_path, dataset_sources=[f"{USER}/relay-handoff/versions/3"])
    assert error.field == "dataset_sources"
    assert error.hint == f"write {USER}/relay-handoff/3"


def test_code_file_in_latin1_is_rejected(tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK)
    (folder / "main.py").write_bytes("print('caf\xe9')\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8") as caught:
        kernels.validate_kernel_metadata(folder, username=USER)
    assert caught.value.field == "code_file"


def test_notebook_without_kernelspec_is_rejected(tmp_path: Path) -> None:
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}
    folder = script_kernel(tmp_path, "train-digits", "", kernel_type="notebook", code_file="main.ipynb")
    (folder / "main.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        kernels.validate_kernel_metadata(folder, username=USER)
    assert caught.value.field == "metadata.kernelspec"


def test_notebook_with_kernelspec_is_accepted(tmp_path: Path) -> None:
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [],
    }
    folder = script_kernel(tmp_path, "train-digits", "", kernel_type="notebook", code_file="main.ipynb")
    (folder / "main.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    assert kernels.validate_kernel_metadata(folder, username=USER)["kernel_type"] == "notebook"


def test_status_requires_a_version() -> None:
    with pytest.raises(ValueError, match="no version"):
        kernels.kernel_status(None, KernelRef.parse(f"{USER}/train-digits"))  # type: ignore[arg-type]


# --- push and status (emulator) -----------------------------------------------


def test_push_returns_the_new_version(relay_api: Any, tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK)
    first = kernels.push_kernel(relay_api, folder)
    kernels.wait_for_kernel(relay_api, first.ref, timeout=60, interval=0.1)
    second = kernels.push_kernel(relay_api, folder)
    assert str(first.ref) == f"{USER}/train-digits/1"
    assert second.ref.version == 2


def test_push_leaves_the_folder_unchanged(relay_api: Any, tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    kernels.push_kernel(relay_api, folder, dataset_sources=[], machine_shape="none", timeout_seconds=600)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_push_while_running_is_refused(relay_api: Any, tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", SLOW)
    first = kernels.push_kernel(relay_api, folder)
    with pytest.raises(KernelRunError) as caught:
        kernels.push_kernel(relay_api, folder)
    assert caught.value.version == first.ref.version
    assert kernels.latest_version(relay_api, first.ref) == 1


def test_push_is_not_retried_after_server_error(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK)
    emulator.faults.inject("SaveKernel", "503")
    with pytest.raises(KaggleUnavailableError):
        kernels.push_kernel(relay_api, folder)
    assert kernels.latest_version(relay_api, KernelRef.parse(f"{USER}/train-digits")) is None


def test_push_is_retried_after_rate_limit(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK)
    emulator.faults.inject("SaveKernel", "429", retry_after=0.1)
    assert kernels.push_kernel(relay_api, folder).ref.version == 1


def test_push_reports_sources_kaggle_refused(relay_api: Any, tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK)
    result = kernels.push_kernel(relay_api, folder, dataset_sources=[f"{USER}/no-such-dataset/4"])
    assert result.invalid_sources == [f"{USER}/no-such-dataset/4"]


def test_push_of_invalid_metadata_sends_nothing(relay_api: Any, tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK, title="Train \u2014 Digits")
    with pytest.raises(ConfigError):
        kernels.push_kernel(relay_api, folder)
    assert kernels.latest_version(relay_api, KernelRef.parse(f"{USER}/train-digits")) is None


def test_wait_returns_error_state_with_message(relay_api: Any, tmp_path: Path) -> None:
    pushed = kernels.push_kernel(relay_api, script_kernel(tmp_path, "train-digits", FAILS))
    state = kernels.wait_for_kernel(relay_api, pushed.ref, timeout=60, interval=0.1)
    assert state.status is KernelStatus.ERROR
    assert state.ref == pushed.ref


def test_wait_is_bounded_by_timeout(relay_api: Any, tmp_path: Path) -> None:
    pushed = kernels.push_kernel(relay_api, script_kernel(tmp_path, "train-digits", SLOW))
    clock = FakeClock()
    with pytest.raises(WaitTimeoutError) as caught:
        kernels.wait_for_kernel(relay_api, pushed.ref, timeout=30, interval=10, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [10, 10, 10]
    assert caught.value.last_state in ("queued", "running")
    assert str(pushed.ref) in str(caught.value)


def test_status_polls_survive_rate_limit_storm(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    pushed = kernels.push_kernel(relay_api, script_kernel(tmp_path, "train-digits", QUICK))
    emulator.faults.inject("GetKernelSessionStatus", "429", times=3, retry_after=0.1)
    state = kernels.wait_for_kernel(relay_api, pushed.ref, timeout=60, interval=0.1)
    assert state.status is KernelStatus.COMPLETE
    assert emulator.faults.pending() == []


def test_hung_call_times_out(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    pushed = kernels.push_kernel(relay_api, script_kernel(tmp_path, "train-digits", QUICK))
    client.set_timeout(relay_api, 0.3)
    emulator.faults.inject("GetKernelSessionStatus", "slow", seconds=3)
    with pytest.raises(KaggleUnavailableError, match="timed out"):
        client.call("GetKernelSessionStatus", relay_api.kernels_status, str(pushed.ref))


def test_rejected_push_error_field_is_typed(relay_api: Any, tmp_path: Path) -> None:
    folder = script_kernel(tmp_path, "train-digits", QUICK)
    with pytest.raises((KaggleRejectedError, ConfigError)):
        kernels.push_kernel(relay_api, folder, machine_shape="NvidiaTeslaP100")


# --- outputs (emulator) -----------------------------------------------------------


def finished(relay_api: Any, tmp_path: Path, code: str = WRITES_CHECKPOINT) -> KernelRef:
    pushed = kernels.push_kernel(relay_api, script_kernel(tmp_path, "train-digits", code))
    kernels.wait_for_kernel(relay_api, pushed.ref, timeout=60, interval=0.1)
    return pushed.ref


def test_download_keeps_nested_names_and_log(relay_api: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")
    assert outputs.files == [outputs.folder / "checkpoints" / "ckpt-step000100.pt"]
    assert outputs.files[0].read_bytes() == b"x" * 1000
    assert outputs.log_path == tmp_path / "harvest" / "train-digits.log"
    assert "saved" in outputs.log_path.read_text(encoding="utf-8")


def test_download_reads_every_page(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    for index in range(620):
        emulator.add_output(str(ref.unversioned()), 1, f"extra/file-{index:04d}.bin", b"%d" % index)
    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")
    assert len(outputs.files) == 621
    assert (outputs.folder / "extra" / "file-0619.bin").read_bytes() == b"619"


def test_download_refuses_hostile_names(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    kernel = str(ref.unversioned())
    for name in ("ckpt/step_100.pt", "../escape.txt", "/tmp/abs.txt", "a\\b.pt", "C:/evil.pt", "train-digits.log"):
        emulator.add_output(kernel, 1, name, b"from " + name.encode())
    dest = tmp_path / "harvest"
    outputs = kernels.download_outputs(relay_api, ref, dest)

    refused = sorted(error.name for error in outputs.refused)
    assert refused == sorted(["../escape.txt", "/tmp/abs.txt", "a\\b.pt", "C:/evil.pt"])
    assert (outputs.folder / "ckpt" / "step_100.pt").read_bytes() == b"from ckpt/step_100.pt"
    assert not (tmp_path / "escape.txt").exists()
    assert not (dest / "escape.txt").exists()
    # The output named like the log and the log itself are both kept, apart.
    assert (outputs.folder / "train-digits.log").read_bytes() == b"from train-digits.log"
    assert outputs.log_path is not None
    assert "saved" in outputs.log_path.read_text(encoding="utf-8")


def test_manifest_entry_that_did_not_arrive_fails_harvest(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    manifest = {
        "schema": 1,
        "files": [
            {"file": "ckpt-step000100.pt", "bytes": 1000, "sha256": "0" * 64},
            {"file": "../ckpt-step000200.pt", "bytes": 5, "sha256": "0" * 64},
        ],
    }
    kernel = str(ref.unversioned())
    emulator.add_output(kernel, 1, f"checkpoints/{MANIFEST_NAME}", json.dumps(manifest).encode())
    emulator.add_output(kernel, 1, "checkpoints/../ckpt-step000200.pt", b"12345")
    with pytest.raises(ManifestError, match="ckpt-step000200.pt"):
        kernels.download_outputs(relay_api, ref, tmp_path / "harvest")


def test_download_with_pattern_fetches_only_matches(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    emulator.add_output(str(ref.unversioned()), 1, "notes/readme.txt", b"hi")
    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest", file_pattern=r"^checkpoints/")
    assert [path.name for path in outputs.files] == ["ckpt-step000100.pt"]


def test_cut_download_is_retried(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    emulator.faults.inject("download", "truncate")
    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")
    assert outputs.files[0].read_bytes() == b"x" * 1000


def test_download_records_sha256(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    big = os.urandom(5 << 20)
    emulator.add_output(str(ref.unversioned()), 1, "checkpoints/big.bin", big)

    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")

    path = outputs.folder / "checkpoints" / "big.bin"
    assert path.read_bytes() == big
    assert known_sha256(path) == hashlib.sha256(big).hexdigest()


def test_cut_large_download_retried_whole(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    big = os.urandom(5 << 20)
    emulator.add_output(str(ref.unversioned()), 1, "checkpoints/big.bin", big)
    emulator.faults.inject("download", "truncate", times=2)

    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")

    path = outputs.folder / "checkpoints" / "big.bin"
    assert path.read_bytes() == big
    assert known_sha256(path) == hashlib.sha256(big).hexdigest()
    assert not [item for item in path.parent.iterdir() if item.name.startswith(".relay-tmp-")]


def test_expired_download_url_is_listed_again(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    emulator.faults.inject("download", "expire")
    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")
    assert outputs.files[0].read_bytes() == b"x" * 1000


def test_second_harvest_removes_stale_files(relay_api: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    stale = tmp_path / "harvest" / "output" / "old" / "ckpt-step000050.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    kernels.download_outputs(relay_api, ref, tmp_path / "harvest")
    assert not stale.exists()


def test_download_refuses_every_escaping_name(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    kernel = str(ref.unversioned())
    hostile = [
        "ckpt/\x00.pt",
        "./../x.txt",
        "ckpt/./x.pt",
        "ckpt/../../x.txt",
        "a//b.pt",
        "ckpt/",
        ".relay-tmp-1234abcd-ckpt.pt",
        "x" * 256 + ".pt",
    ]
    for name in hostile:
        emulator.add_output(kernel, 1, name, b"hostile")
    dest = tmp_path / "harvest"

    outputs = kernels.download_outputs(relay_api, ref, dest)

    assert sorted(error.name for error in outputs.refused) == sorted(hostile)
    for error in outputs.refused:
        assert repr(error.name) in str(error) or error.name in str(error)
    written = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file())
    assert [name for name in written if not name.startswith(("kernel-", "harvest/"))] == []
    assert sorted(path.relative_to(outputs.folder).as_posix() for path in outputs.files) == [
        "checkpoints/ckpt-step000100.pt"
    ]


def test_download_keeps_look_alike_names_inside(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    kernel = str(ref.unversioned())
    # Full-width and leader dots and a full-width solidus are plain characters to the file system.
    look_alikes = ["\uff0e\uff0e/x.txt", "\u2025/y.txt", "..\uff0fz.txt", "\u2024\u2024/w.txt"]
    for name in look_alikes:
        emulator.add_output(kernel, 1, name, name.encode())
    dest = tmp_path / "harvest"

    outputs = kernels.download_outputs(relay_api, ref, dest)

    assert outputs.refused == []
    for name in look_alikes:
        path = outputs.folder / name
        assert path.resolve().is_relative_to(outputs.folder.resolve())
        assert path.read_bytes() == name.encode()


def test_download_keeps_name_of_maximum_length(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    long_name = "c" * 252 + ".pt"  # 255 bytes, the longest name Linux file systems accept
    emulator.add_output(str(ref.unversioned()), 1, f"checkpoints/{long_name}", b"long")

    outputs = kernels.download_outputs(relay_api, ref, tmp_path / "harvest")

    assert outputs.refused == []
    assert (outputs.folder / "checkpoints" / long_name).read_bytes() == b"long"


def test_manifest_entry_missing_from_listing_fails_harvest(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    manifest = {
        "schema": 1,
        "files": [
            {"file": "ckpt-step000100.pt", "bytes": 1000, "sha256": "0" * 64},
            {"file": "ckpt-step000200.pt", "bytes": 1000, "sha256": "0" * 64},
        ],
    }
    emulator.add_output(str(ref.unversioned()), 1, f"checkpoints/{MANIFEST_NAME}", json.dumps(manifest).encode())

    with pytest.raises(ManifestError) as caught:
        kernels.download_outputs(relay_api, ref, tmp_path / "harvest")

    assert "lists 1 file(s) that did not arrive: ckpt-step000200.pt" in str(caught.value)
    assert "(refused names: none)" in str(caught.value)


def test_manifest_on_second_page_is_checked(relay_api: Any, emulator: Any, tmp_path: Path) -> None:
    ref = finished(relay_api, tmp_path)
    kernel = str(ref.unversioned())
    for index in range(450):
        emulator.add_output(kernel, 1, f"logs/part-{index:04d}.txt", b"x")
    manifest = {"schema": 1, "files": [{"file": "ckpt-step000900.pt", "bytes": 3, "sha256": "0" * 64}]}
    emulator.add_output(kernel, 1, f"checkpoints/late/{MANIFEST_NAME}", json.dumps(manifest).encode())

    with pytest.raises(ManifestError, match="ckpt-step000900.pt"):
        kernels.download_outputs(relay_api, ref, tmp_path / "harvest")
