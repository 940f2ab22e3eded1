"""``kaggle-relay emulator serve`` as a real subprocess, driven by the kaggle client and CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from requests.exceptions import HTTPError

from kaggle_relay.relay.endpoint import ENV_VAR, create_api, resolve_endpoint
from tests.emulator.helpers import dataset_folder, kernel_folder, status_name, wait_for_kernel

USER, KEY = "cli-user", "cli-key"

# Runs the kaggle command-line tool with its module-level KaggleApi pointed at
# KAGGLE_RELAY_API_ENDPOINT through the seam.
KAGGLE_CLI = """\
import sys
import kaggle
from kaggle.cli import main
from kaggle_relay.relay.endpoint import endpoint_api_class, resolve_endpoint
kaggle.api.__class__ = endpoint_api_class()
kaggle.api.endpoint = resolve_endpoint()
sys.argv = ["kaggle"] + sys.argv[1:]
main()
"""


def serve_command(data: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kaggle_relay.cli.main",
        "emulator",
        "serve",
        "--data",
        str(data),
        *extra,
    ]


@pytest.fixture
def served(
    tmp_path: Path, _isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An emulator started with the CLI; yields its URL and stops it with SIGTERM."""
    command = serve_command(
        tmp_path / "data",
        "--processing-delay",
        "0.2",
        "--session-limit",
        "30",
        "--user",
        f"{USER}:{KEY}",
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), process.stderr.read() if process.stderr else ""
        credentials = _isolated_kaggle_config / "kaggle.json"
        credentials.write_text(json.dumps({"username": USER, "key": KEY}))
        credentials.chmod(0o600)
        monkeypatch.setenv(ENV_VAR, url)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()
    assert returncode == 0


@pytest.mark.slow
def test_served_emulator_runs_a_push(served: str, tmp_path: Path) -> None:
    api = create_api(resolve_endpoint(), authenticate=True)
    api.kernels_push(
        str(kernel_folder(tmp_path, "cli-kernel", "print('from cli')\n", id=f"{USER}/cli-kernel"))
    )
    final = wait_for_kernel(api, f"{USER}/cli-kernel")

    assert status_name(final) == "COMPLETE"
    assert "from cli" in api.kernels_logs(f"{USER}/cli-kernel")


@pytest.mark.slow
def test_admin_routes_inject_faults(served: str, tmp_path: Path) -> None:
    api = create_api(resolve_endpoint(), authenticate=True)
    fault = {"route": "GetDatasetStatus", "kind": "503", "times": 1}
    assert requests.post(f"{served}/_emulator/faults", json=fault, timeout=10).status_code == 200
    assert (
        requests.get(f"{served}/_emulator/faults", timeout=10).json()["faults"][0]["kind"] == "503"
    )

    with pytest.raises(HTTPError) as raised:
        api.dataset_status(f"{USER}/no-such-data")
    assert raised.value.response.status_code == 503
    bad = requests.post(
        f"{served}/_emulator/faults", json={"route": "x", "kind": "nope"}, timeout=10
    )
    assert bad.status_code == 400
    assert requests.get(f"{served}/_emulator/health", timeout=10).json()["ok"] is True


@pytest.mark.slow
def test_admin_route_adds_hostile_output(served: str, tmp_path: Path) -> None:
    api = create_api(resolve_endpoint(), authenticate=True)
    api.kernels_push(
        str(kernel_folder(tmp_path, "cli-kernel", "print(1)\n", id=f"{USER}/cli-kernel"))
    )
    wait_for_kernel(api, f"{USER}/cli-kernel")
    entry = {"kernel": f"{USER}/cli-kernel", "version": 1, "name": "../escape.txt", "content": "x"}
    assert requests.post(f"{served}/_emulator/outputs", json=entry, timeout=10).status_code == 200

    with pytest.raises(ValueError, match="escape.txt"):
        api.kernels_output(f"{USER}/cli-kernel", str(tmp_path / "out"))


@pytest.mark.slow
def test_kaggle_command_line_tool_pushes_and_versions(served: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    folder = kernel_folder(tmp_path, "tool-kernel", "print('tool')\n", id=f"{USER}/tool-kernel")
    pushed = subprocess.run(
        [sys.executable, "-c", KAGGLE_CLI, "kernels", "push", "-p", str(folder)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert "Kernel version 1 successfully pushed" in pushed.stdout, pushed.stdout + pushed.stderr

    data = dataset_folder(
        tmp_path, "tool-data", {"ckpt/step_1/model.pt": "w"}, id=f"{USER}/tool-data"
    )
    created = subprocess.run(
        [sys.executable, "-c", KAGGLE_CLI, "datasets", "create", "-p", str(data), "-r", "zip", "-q"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    api = create_api(resolve_endpoint(), authenticate=True)
    wait_for_kernel(api, f"{USER}/tool-kernel")
    assert [item.name for item in api.dataset_list_files(f"{USER}/tool-data/1").files] == [
        "ckpt/step_1/model.pt"
    ]


def test_non_loopback_host_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        serve_command(tmp_path / "data", "--host", "0.0.0.0"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert result.stdout == ""
    assert "refusing to bind the emulator to '0.0.0.0'" in result.stderr
