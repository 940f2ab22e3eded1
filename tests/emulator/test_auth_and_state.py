"""Authentication, and state that survives a restart of the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from requests.exceptions import HTTPError

from kaggle_relay.emulator import Emulator, EmulatorConfig
from kaggle_relay.relay.endpoint import create_api
from tests.conftest import EMULATOR_KEY, EMULATOR_TOKEN, EMULATOR_USER
from tests.emulator.helpers import (
    dataset_folder,
    kernel_folder,
    status_name,
    wait_for_dataset,
    wait_for_kernel,
)

KERNEL = f"{EMULATOR_USER}/state-kernel"
DATASET = f"{EMULATOR_USER}/state-data"


def write_credentials(config_dir: Path, key: str) -> None:
    path = config_dir / "kaggle.json"
    path.write_text(json.dumps({"username": EMULATOR_USER, "key": key}))
    path.chmod(0o600)


def test_wrong_key_gets_401(emulator, _isolated_kaggle_config: Path) -> None:
    write_credentials(_isolated_kaggle_config, "not-the-key")
    api = create_api(emulator.url, authenticate=True)

    with pytest.raises(HTTPError, match="invalid API key for user 'relay-tester'") as raised:
        api.dataset_status(DATASET)
    assert raised.value.response.status_code == 401
    # The client turns a 401 on a kernel call into a ValueError about permissions.
    with pytest.raises(ValueError, match="Permission 'kernels.get' was denied"):
        api.kernels_status(KERNEL)


def test_access_token_authenticates_through_introspection(
    emulator, _isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", EMULATOR_TOKEN)
    api = create_api(emulator.url, authenticate=True)

    assert api.config_values["username"] == EMULATOR_USER
    answer = api.kernels_push(str(kernel_folder(tmp_path, "state-kernel", "print(1)\n")))
    assert answer.version_number == 1


def test_unknown_token_is_rejected_and_key_used(
    emulator, _isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_unknown")
    write_credentials(_isolated_kaggle_config, EMULATOR_KEY)
    api = create_api(emulator.url, authenticate=True)

    assert api.config_values.get("auth_method") == "LEGACY_API_KEY"


def test_state_survives_a_restart(tmp_path: Path, _isolated_kaggle_config: Path) -> None:
    write_credentials(_isolated_kaggle_config, EMULATOR_KEY)
    config = EmulatorConfig(
        data_dir=tmp_path / "data", processing_delay=0.2, users={EMULATOR_USER: EMULATOR_KEY}
    )
    with Emulator(config) as first:
        api = create_api(first.url, authenticate=True)
        api.kernels_push(
            str(kernel_folder(tmp_path, "state-kernel", "open('o.txt','w').write('o')\n"))
        )
        wait_for_kernel(api, KERNEL)
        folder = dataset_folder(tmp_path, "state-data", {"a.txt": "a"})
        assert api.dataset_create_new(str(folder), quiet=True).status == "ok"
        wait_for_dataset(api, DATASET)
        api.kernels_push(
            str(kernel_folder(tmp_path, "busy-kernel", "import time\ntime.sleep(60)\n"))
        )

    with Emulator(config) as second:
        api = create_api(second.url, authenticate=True)
        assert status_name(api.kernels_status(KERNEL)) == "COMPLETE"
        api.kernels_output(KERNEL, str(tmp_path / "out"))
        assert (tmp_path / "out" / "o.txt").read_text() == "o"
        assert api.dataset_status(DATASET) == "ready"
        assert [item.name for item in api.dataset_list_files(DATASET).files] == ["a.txt"]
        busy = api.kernels_status(f"{EMULATOR_USER}/busy-kernel")
        assert status_name(busy) == "ERROR"
        assert "emulator" in busy.failure_message
        second_push = api.kernels_push(str(kernel_folder(tmp_path, "state-kernel", "print(2)\n")))
        assert second_push.version_number == 2
