"""Kernel pushes, statuses and outputs through the real kaggle client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from requests.exceptions import HTTPError

from kaggle_relay.emulator import Emulator, EmulatorConfig
from kaggle_relay.relay.endpoint import create_api
from tests.conftest import EMULATOR_KEY, EMULATOR_USER
from tests.emulator.helpers import kernel_folder, notebook, status_name, wait_for_kernel

KERNEL = f"{EMULATOR_USER}/hello-kernel"

SLEEPER = """\
import time
open('early.txt', 'w').write('written before the limit')
print('started', flush=True)
time.sleep(60)
"""

TERM_IGNORER = """\
import signal, time
signal.signal(signal.SIGTERM, lambda *args: print('ignoring SIGTERM', flush=True))
print('started', flush=True)
while True:
    time.sleep(0.1)
"""


def push(api, tmp_path: Path, slug: str, code: str, **options) -> object:
    timeout = options.pop("timeout", None)
    answer = api.kernels_push(str(kernel_folder(tmp_path, slug, code, **options)), timeout=timeout)
    assert not answer.error, answer.error
    return answer


def test_script_push_runs_to_complete(kaggle_api, tmp_path: Path) -> None:
    code = "open('result.txt', 'w').write('done')\nprint('hello from the kernel')\n"
    answer = push(kaggle_api, tmp_path, "hello-kernel", code)

    assert answer.version_number == 1
    assert answer.ref == f"/code/{KERNEL}"
    final = wait_for_kernel(kaggle_api, KERNEL)
    assert status_name(final) == "COMPLETE"
    assert final.failure_message == ""
    files, token = kaggle_api.kernels_output(KERNEL, str(tmp_path / "out"))
    assert token == ""
    assert (tmp_path / "out" / "result.txt").read_text() == "done"
    log = json.loads((tmp_path / "out" / "hello-kernel.log").read_text())
    assert {"stream_name": "stdout", "data": "hello from the kernel\n"}.items() <= log[0].items()


def test_each_push_makes_a_new_version(kaggle_api, tmp_path: Path) -> None:
    first = push(kaggle_api, tmp_path, "hello-kernel", "print('one')\n")
    wait_for_kernel(kaggle_api, KERNEL)
    second = push(kaggle_api, tmp_path, "hello-kernel", "print('two')\n")
    wait_for_kernel(kaggle_api, KERNEL)

    assert (first.version_number, second.version_number) == (1, 2)
    assert "one" in kaggle_api.kernels_logs(f"{KERNEL}/1")
    assert "two" in kaggle_api.kernels_logs(f"{KERNEL}/2")
    assert "two" in kaggle_api.kernels_logs(KERNEL)


def test_kernel_sees_kaggle_environment_and_not_our_package(
    kaggle_api, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path.cwd()))
    code = """\
import json, os, sys
try:
    import kaggle_relay
    found = kaggle_relay.__file__
except ImportError:
    found = None
report = {name: os.environ.get(name) for name in (
    'KAGGLE_KERNEL_RUN_TYPE', 'KAGGLE_RELAY_KAGGLE_ROOT', 'KAGGLE_RELAY_SESSION_DEADLINE',
    'PYTHONPATH', 'KAGGLE_KEY')}
report['cwd'] = os.getcwd()
report['kaggle_relay'] = found
json.dump(report, open('report.json', 'w'))
"""
    push(kaggle_api, tmp_path, "env-report", code)
    wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/env-report")
    kaggle_api.kernels_output(f"{EMULATOR_USER}/env-report", str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())

    root = Path(report["KAGGLE_RELAY_KAGGLE_ROOT"])
    assert report["KAGGLE_KERNEL_RUN_TYPE"] == "Batch"
    assert report["cwd"] == str(root / "working")
    assert (root / "input").is_dir()
    assert float(report["KAGGLE_RELAY_SESSION_DEADLINE"]) > 0
    assert report["PYTHONPATH"] is None
    assert report["KAGGLE_KEY"] is None
    assert report["kaggle_relay"] is None


def test_nonzero_exit_ends_error_and_keeps_outputs(kaggle_api, tmp_path: Path) -> None:
    code = "open('partial.txt', 'w').write('kept')\nraise SystemExit('boom')\n"
    push(kaggle_api, tmp_path, "failing-kernel", code)
    final = wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/failing-kernel")

    assert status_name(final) == "ERROR"
    assert final.failure_message
    kaggle_api.kernels_output(f"{EMULATOR_USER}/failing-kernel", str(tmp_path / "out"))
    assert (tmp_path / "out" / "partial.txt").read_text() == "kept"
    assert "boom" in (tmp_path / "out" / "failing-kernel.log").read_text()


def test_session_limit_ends_cancel_acknowledged_and_drops_outputs(
    kaggle_api, tmp_path: Path
) -> None:
    push(kaggle_api, tmp_path, "sleepy-kernel", SLEEPER, timeout="1")
    final = wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/sleepy-kernel")

    assert status_name(final) == "CANCEL_ACKNOWLEDGED"
    assert final.failure_message == ""
    files, _ = kaggle_api.kernels_output(f"{EMULATOR_USER}/sleepy-kernel", str(tmp_path / "out"))
    assert [Path(name).name for name in files] == ["sleepy-kernel.log"]
    log = (tmp_path / "out" / "sleepy-kernel.log").read_text()
    assert "started" in log
    assert "timed out" in log


def test_sigterm_ignored_is_killed_after_grace(kaggle_api, tmp_path: Path) -> None:
    push(kaggle_api, tmp_path, "stubborn-kernel", TERM_IGNORER, timeout="1")
    final = wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/stubborn-kernel")

    assert status_name(final) == "CANCEL_ACKNOWLEDGED"
    log = kaggle_api.kernels_logs(f"{EMULATOR_USER}/stubborn-kernel")
    assert "ignoring SIGTERM" in log
    assert "timed out" in log


def test_keep_killed_outputs_flag_keeps_files(
    tmp_path: Path, _isolated_kaggle_config: Path
) -> None:
    config = EmulatorConfig(
        data_dir=tmp_path / "data",
        kill_grace=1.0,
        keep_killed_outputs=True,
        users={EMULATOR_USER: EMULATOR_KEY},
    )
    with Emulator(config) as server:
        (_isolated_kaggle_config / "kaggle.json").write_text(
            json.dumps({"username": EMULATOR_USER, "key": EMULATOR_KEY})
        )
        api = create_api(server.url, authenticate=True)
        push(api, tmp_path, "sleepy-kernel", SLEEPER, timeout="1")
        wait_for_kernel(api, f"{EMULATOR_USER}/sleepy-kernel")
        api.kernels_output(f"{EMULATOR_USER}/sleepy-kernel", str(tmp_path / "out"))

    assert (tmp_path / "out" / "early.txt").read_text() == "written before the limit"


def test_push_while_running_is_rejected(kaggle_api, tmp_path: Path) -> None:
    push(kaggle_api, tmp_path, "sleepy-kernel", SLEEPER, timeout="2")
    again = kaggle_api.kernels_push(str(kernel_folder(tmp_path, "sleepy-kernel", "print(1)\n")))

    assert "already has version 1" in again.error
    assert not again.version_number
    wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/sleepy-kernel")
    after = push(kaggle_api, tmp_path, "sleepy-kernel", "print(1)\n")
    assert after.version_number == 2


def test_status_of_a_bare_version_number_is_not_found(kaggle_api, tmp_path: Path) -> None:
    push(kaggle_api, tmp_path, "hello-kernel", "print(1)\n")
    wait_for_kernel(kaggle_api, KERNEL)
    client = kaggle_api.build_kaggle_client()
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

    request = ApiGetKernelSessionStatusRequest()
    request.user_name, request.kernel_slug, request.version_label = (
        EMULATOR_USER,
        "hello-kernel",
        "1",
    )
    with client, pytest.raises(HTTPError) as raised:
        client.kernels.kernels_api_client.get_kernel_session_status(request)

    assert raised.value.response.status_code == 404
    assert status_name(kaggle_api.kernels_status(f"{KERNEL}/1")) == "COMPLETE"


def test_output_download_with_pattern_and_subfolders(kaggle_api, tmp_path: Path) -> None:
    code = """\
import os
os.makedirs('ckpt/step_100', exist_ok=True)
open('ckpt/step_100/model.pt', 'wb').write(b'weights')
open('notes.txt', 'w').write('notes')
"""
    push(kaggle_api, tmp_path, "hello-kernel", code)
    wait_for_kernel(kaggle_api, KERNEL)
    files, _ = kaggle_api.kernels_output(KERNEL, str(tmp_path / "out"), file_pattern=r"\.pt$")

    assert (tmp_path / "out" / "ckpt" / "step_100" / "model.pt").read_bytes() == b"weights"
    assert not (tmp_path / "out" / "notes.txt").exists()
    assert sorted(Path(name).name for name in files) == ["hello-kernel.log", "model.pt"]


def test_outputs_come_in_pages(kaggle_api, tmp_path: Path, emulator) -> None:
    code = "for i in range(23):\n    open(f'file_{i:03d}.txt', 'w').write(str(i))\n"
    push(kaggle_api, tmp_path, "many-outputs", code)
    wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/many-outputs")
    emulator.config.output_page_cap = 10
    first_page, token = kaggle_api.kernels_output(
        f"{EMULATOR_USER}/many-outputs", str(tmp_path / "page"), page_token="", page_size=50
    )
    everything, last = kaggle_api.kernels_output(
        f"{EMULATOR_USER}/many-outputs", str(tmp_path / "all")
    )

    assert len(first_page) == 10
    assert token == "10"
    assert last == ""
    assert len(list((tmp_path / "all").glob("file_*.txt"))) == 23


def test_hostile_output_names_are_listed(kaggle_api, tmp_path: Path, emulator) -> None:
    push(kaggle_api, tmp_path, "hello-kernel", "open('ok.txt', 'w').write('ok')\n")
    wait_for_kernel(kaggle_api, KERNEL)
    emulator.add_output(KERNEL, 1, "../escape.txt", b"escaped")
    client = kaggle_api.build_kaggle_client()
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    request = ApiListKernelSessionOutputRequest()
    request.user_name, request.kernel_slug = EMULATOR_USER, "hello-kernel"
    with client:
        listing = client.kernels.kernels_api_client.list_kernel_session_output(request)
    assert [item.file_name for item in listing.files] == ["ok.txt", "../escape.txt"]

    # kaggle 2.2.5 refuses a name that resolves outside the download folder.
    with pytest.raises(ValueError, match="resolves outside destination"):
        kaggle_api.kernels_output(KERNEL, str(tmp_path / "out" / "inner"))
    assert not (tmp_path / "out" / "escape.txt").exists()


@pytest.mark.parametrize("name", ["/tmp/abs.txt", "a\\b.pt", "hello-kernel.log"])
def test_other_hostile_names_and_what_the_client_does(
    kaggle_api, tmp_path: Path, emulator, name: str
) -> None:
    push(kaggle_api, tmp_path, "hello-kernel", "print('log line')\n")
    wait_for_kernel(kaggle_api, KERNEL)
    emulator.add_output(KERNEL, 1, name, b"hostile")
    target = tmp_path / "out"

    if name.startswith("/"):
        with pytest.raises(ValueError, match="resolves outside destination"):
            kaggle_api.kernels_output(KERNEL, str(target))
        return
    kaggle_api.kernels_output(KERNEL, str(target))
    if name == "hello-kernel.log":
        # The client writes the run log after the outputs, over the output of the same name.
        assert "log line" in (target / name).read_text()
    else:
        assert (target / name).read_bytes() == b"hostile"


def test_pull_returns_source_and_metadata(kaggle_api, tmp_path: Path) -> None:
    push(kaggle_api, tmp_path, "hello-kernel", "print('pulled source')\n")
    wait_for_kernel(kaggle_api, KERNEL)
    kaggle_api.kernels_pull(KERNEL, str(tmp_path / "pulled"), metadata=True)

    assert "pulled source" in (tmp_path / "pulled" / "hello-kernel.py").read_text()
    meta = json.loads((tmp_path / "pulled" / "kernel-metadata.json").read_text())
    assert meta["id"] == KERNEL
    assert meta["enable_internet"] is False


def test_title_that_does_not_slug_to_id_creates_other_kernel(kaggle_api, tmp_path: Path) -> None:
    folder = kernel_folder(tmp_path, "daily-run", "print(1)\n", title="Daily run \u2014 day one")
    answer = kaggle_api.kernels_push(str(folder))

    assert answer.ref == f"/code/{EMULATOR_USER}/daily-run-day-one"
    with pytest.raises(HTTPError):
        kaggle_api.kernels_status(f"{EMULATOR_USER}/daily-run")


def test_push_for_another_owner_is_forbidden(kaggle_api, tmp_path: Path) -> None:
    folder = kernel_folder(tmp_path, "other-kernel", "print(1)\n", id="someone-else/other-kernel")

    with pytest.raises(HTTPError) as raised:
        kaggle_api.kernels_push(str(folder))
    assert raised.value.response.status_code == 403


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"machine_shape": "NvidiaTeslaK80"}, "Invalid machine shape"),
        ({"id": f"{EMULATOR_USER}/Bad Slug"}, "lower-case letters"),
    ],
)
def test_push_metadata_rules_are_enforced(kaggle_api, tmp_path: Path, metadata, message) -> None:
    folder = kernel_folder(tmp_path, "rules-kernel", "print(1)\n", **metadata)

    with pytest.raises(HTTPError, match=message):
        kaggle_api.kernels_push(str(folder))


def test_missing_sources_are_reported_invalid(kaggle_api, tmp_path: Path) -> None:
    folder = kernel_folder(
        tmp_path,
        "hello-kernel",
        "print(1)\n",
        dataset_sources=[f"{EMULATOR_USER}/no-such-data"],
        kernel_sources=[f"{EMULATOR_USER}/no-such-kernel"],
    )
    answer = kaggle_api.kernels_push(str(folder))

    assert answer.invalid_dataset_sources == [f"{EMULATOR_USER}/no-such-data"]
    assert answer.invalid_kernel_sources == [f"{EMULATOR_USER}/no-such-kernel"]
    assert status_name(wait_for_kernel(kaggle_api, KERNEL)) == "COMPLETE"


@pytest.mark.slow
def test_notebook_runs_cell_by_cell(kaggle_api, tmp_path: Path) -> None:
    code = notebook("x = 21", "print('answer', x * 2)\nopen('nb.txt', 'w').write('nb')")
    push(kaggle_api, tmp_path, "hello-notebook", code, kernel_type="notebook")
    final = wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/hello-notebook", timeout=120)

    assert status_name(final) == "COMPLETE"
    kaggle_api.kernels_output(f"{EMULATOR_USER}/hello-notebook", str(tmp_path / "out"))
    assert (tmp_path / "out" / "nb.txt").read_text() == "nb"
    assert "answer 42" in (tmp_path / "out" / "hello-notebook.log").read_text()


@pytest.mark.slow
def test_notebook_cell_error_ends_error(kaggle_api, tmp_path: Path) -> None:
    code = notebook("print('before')", "raise ValueError('cell failed')", "print('never')")
    push(kaggle_api, tmp_path, "broken-notebook", code, kernel_type="notebook")
    final = wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/broken-notebook", timeout=120)

    assert status_name(final) == "ERROR"
    log = kaggle_api.kernels_logs(f"{EMULATOR_USER}/broken-notebook")
    assert "cell failed" in log
    assert "never" not in log


@pytest.mark.slow
def test_notebook_at_session_limit_ends_cancel_acknowledged(kaggle_api, tmp_path: Path) -> None:
    code = notebook("print('looping', flush=True)", "import time\nwhile True:\n    time.sleep(0.1)")
    push(kaggle_api, tmp_path, "endless-notebook", code, kernel_type="notebook", timeout="4")
    final = wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/endless-notebook", timeout=120)

    assert status_name(final) == "CANCEL_ACKNOWLEDGED"
    assert final.failure_message == ""
    log = kaggle_api.kernels_logs(f"{EMULATOR_USER}/endless-notebook")
    assert "looping" in log
    assert "timed out" in log


def test_notebook_without_kernelspec_fails_at_once(kaggle_api, tmp_path: Path) -> None:
    code = notebook("print('hi')", kernelspec=False)
    push(kaggle_api, tmp_path, "bare-notebook", code, kernel_type="notebook")
    final = wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/bare-notebook")

    assert status_name(final) == "ERROR"
    assert "kernelspec" in kaggle_api.kernels_logs(f"{EMULATOR_USER}/bare-notebook")
