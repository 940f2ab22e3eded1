"""`kaggle-relay next-day` on running chains: one status request per chain, no torch, step timings in --json."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kaggle_relay.cli.main import main
from kaggle_relay.relay import chain as chains
from kaggle_relay.relay.config import load_config
from tests.relay.chainkit import OWNER, start_emulator, write_step_project

PROBE = """
import json, sys
from kaggle_relay.cli.main import main
code = main(["next-day", "--json", "--config", sys.argv[1]])
print(json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""

SLEEPER = "import time\n\ntime.sleep(600)\n"
CHAINS = ("tick-one", "tick-two", "tick-three")


def write_sleeping_chains(project: Path) -> Path:
    """Write a relay.toml with one chain per name, each on its own kernel that sleeps for ten minutes."""
    tables = []
    for name in CHAINS:
        kernel = project / name
        kernel.mkdir(parents=True)
        (kernel / "main.py").write_text(SLEEPER, encoding="utf-8")
        metadata = {"id": f"{OWNER}/{name}", "title": name.replace("-", " "), "code_file": "main.py",
                    "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": False,
                    "enable_tpu": False, "enable_internet": False, "dataset_sources": []}
        (kernel / "kernel-metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
        tables.append(f'[[chain]]\nname = "{name}"\nkernel = "{name}"\ndataset = "{OWNER}/{name}-handoff"\n')
    config = project / "relay.toml"
    config.write_text("\n".join(tables), encoding="utf-8")
    return config


@pytest.fixture
def running_chains(tmp_path: Path, _isolated_kaggle_config: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> Any:
    """Three chains pushed once, whose versions sleep well past the test; yields relay.toml and the push result."""
    server: Any = start_emulator(tmp_path / "emulator", _isolated_kaggle_config, monkeypatch, session_limit=300.0)
    try:
        config = write_sleeping_chains(tmp_path / "project")
        assert main(["next-day", "--json", "--config", str(config)]) == 10
        yield config, json.loads(capsys.readouterr().out)
    finally:
        server.stop()


def test_running_tick_polls_once_per_chain(running_chains: Any, caplog: pytest.LogCaptureFixture) -> None:
    config, _ = running_chains

    with caplog.at_level(logging.DEBUG, logger="kaggle_relay.emulator.handler"):
        result = subprocess.run([sys.executable, "-c", PROBE, str(config)], capture_output=True, text=True, timeout=120)

    probe = json.loads(result.stderr.strip().splitlines()[-1])
    assert probe["code"] == 10
    assert probe["torch"] is False
    requests = [record.getMessage() for record in caplog.records if record.name == "kaggle_relay.emulator.handler"]
    assert len(requests) == len(CHAINS), requests
    assert all("/GetKernelSessionStatus " in request for request in requests), requests


def test_json_result_carries_step_timings(running_chains: Any, capsys: pytest.CaptureFixture[str]) -> None:
    config, pushed = running_chains

    assert main(["next-day", "--json", "--config", str(config)]) == 10
    polled = json.loads(capsys.readouterr().out)

    for item in pushed["chains"]:
        # The tick that pushes also polls the new version once before it exits.
        assert set(item["timings"]) == {"push", "poll"}
        assert item["timings"]["push"] > 0
    for item in polled["chains"]:
        assert set(item["timings"]) == {"poll"}
        assert item["timings"]["poll"] > 0


@pytest.mark.slow
def test_advance_times_every_step_of_a_day(tmp_path: Path, _isolated_kaggle_config: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_step_project(tmp_path / "p", epochs=2)
    server: Any = start_emulator(tmp_path / "emulator", _isolated_kaggle_config, monkeypatch)
    try:
        chain = load_config(project.config).chain[0]
        assert chains.advance(chain).state == "running"
        outcome = chains.advance(chain, wait=True)
    finally:
        server.stop()

    assert outcome.state == "done"
    assert set(outcome.timings) >= {"poll", "harvest", "harvest.download", "harvest.validate", "publish", "push"}
    assert outcome.timings["harvest.download"] + outcome.timings["harvest.validate"] <= outcome.timings["harvest"]
    assert all(seconds > 0 for seconds in outcome.timings.values())
