"""Kernel pushes, statuses and outputs through the real kaggle client."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import EMULATOR_USER
from tests.emulator.helpers import kernel_folder, status_name, wait_for_kernel

KERNEL = f"{EMULATOR_USER}/hello-kernel"


def test_script_push_runs_to_complete(kaggle_api, tmp_path: Path) -> None:
    code = "open('result.txt', 'w').write('done')\nprint('hello from the kernel')\n"
    answer = kaggle_api.kernels_push(str(kernel_folder(tmp_path, "hello-kernel", code)))

    assert not answer.error
    assert answer.version_number == 1
    final = wait_for_kernel(kaggle_api, KERNEL)
    assert status_name(final) == "COMPLETE"
    files, token = kaggle_api.kernels_output(KERNEL, str(tmp_path / "out"))
    assert token == ""
    assert (tmp_path / "out" / "result.txt").read_text() == "done"
    assert "hello from the kernel" in (tmp_path / "out" / "hello-kernel.log").read_text()
