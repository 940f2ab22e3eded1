"""`kaggle-relay status`: reads only the ledger; no credentials, no kaggle or torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_relay.cli.main import main
from kaggle_relay.relay.ledger import Best, CheckpointInfo, Handoff, Ledger, Run
from tests.relay.chainkit import short_emulator

__all__ = ["short_emulator"]

PROBE = """
import json, sys
from kaggle_relay.cli.main import main
code = main(["status", "--json", "--config", *sys.argv[1:]])
print(json.dumps({"code": code, "kaggle": "kaggle" in sys.modules, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


RELAY_TOML = """
[[chain]]
name = "digits"
kernel = "alice/digits-train"
dataset = "alice/h"
"""


def write_config(project: Path) -> Path:
    project.mkdir(parents=True, exist_ok=True)
    path = project / "relay.toml"
    path.write_text(RELAY_TOML, encoding="utf-8")
    return path


def write_ledger(project: Path) -> None:
    write_config(project)
    ledger = Ledger.open(project / ".relay", "digits")
    checkpoint = CheckpointInfo(file="output/checkpoints/ckpt-0003.pt", epoch=3, step=120, metrics={"val_acc": 0.91})
    ledger.runs.append(Run(day=1, run_id="d1", kernel_version=1, pushed_at="2026-12-04T10:00:00.000Z",
                           finished_at="2026-12-04T11:00:00.000Z", status="complete", seconds=3600,
                           session_limit=43200, checkpoint=checkpoint))
    ledger.runs.append(Run(day=2, run_id="d2", kernel_version=2, pushed_at="2026-12-04T12:00:00.000Z",
                           finished_at="2026-12-04T13:00:00.000Z", status="cancel_acknowledged",
                           ended_by="time_limit", session_limit=43200))
    ledger.data.handoff = Handoff(dataset="alice/h", version=1, run_id="d1", checkpoint=checkpoint)
    ledger.data.best = Best(checkpoint=checkpoint, run_id="d1", metric="val_acc", mode="max", kernel_version=1,
                            dataset_version=1)
    ledger.fail("2 sessions in a row ended without a newer valid checkpoint", hint="fix train.py")


def run_status(project: Path, *options: str) -> tuple[dict, dict]:
    result = subprocess.run([sys.executable, "-c", PROBE, str(project / "relay.toml"), *options],
                            capture_output=True, text=True, timeout=60)
    return json.loads(result.stdout), json.loads(result.stderr.strip().splitlines()[-1])


def test_status_json_without_credentials(tmp_path: Path) -> None:
    write_ledger(tmp_path)

    output, probe = run_status(tmp_path)

    assert probe == {"code": 0, "kaggle": False, "torch": False}
    chain = output["chains"][0]
    assert chain["name"] == "digits"
    assert chain["state"] == "failed"
    assert chain["days"] == 2
    assert chain["kernel_version"] == 2
    assert chain["dataset_version"] == 1
    assert chain["last_checkpoint"]["epoch"] == 3
    assert chain["last_checkpoint"]["metrics"] == {"val_acc": 0.91}
    assert chain["error"]["hint"] == "fix train.py"
    assert chain["session"]["limit_seconds"] == 43200
    assert chain["session"]["ended_by"] == "time_limit"
    assert chain["metric"] == "val_acc"
    assert chain["best"]["checkpoint"]["metrics"] == {"val_acc": 0.91}
    assert chain["best"]["dataset_version"] == 1


def test_status_shows_metric_and_time_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ledger(tmp_path)

    code = main(["status", "--config", str(tmp_path / "relay.toml")])

    text = capsys.readouterr().out
    assert code == 0
    assert "epoch 3, val_acc=0.91" in text
    assert "best val_acc (max) = 0.91 at epoch 3, in handoff dataset version 1" in text
    assert "stopped at the session time limit" in text
    assert "fix: fix train.py" in text


def test_status_without_ledger_shows_chains_idle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path)

    output, probe = run_status(tmp_path)
    code = main(["status", "--config", str(tmp_path / "relay.toml")])

    assert probe["code"] == 0
    assert [(chain["name"], chain["state"], chain["days"]) for chain in output["chains"]] == [("digits", "idle", 0)]
    assert code == 0
    assert "start one with `kaggle-relay next-day`" in capsys.readouterr().out


def test_status_unknown_chain_names_known_ones(tmp_path: Path) -> None:
    write_ledger(tmp_path)

    output, probe = run_status(tmp_path, "--chain", "nope")

    assert probe == {"code": 2, "kaggle": False, "torch": False}
    assert "no chain named 'nope'" in output["error"]["message"]
    assert "digits" in output["error"]["hint"]


@pytest.mark.parametrize("text", [None, "[[chain]]\nname = \"digits\"\n"])
def test_status_rejects_missing_or_invalid_config(tmp_path: Path, text: str | None) -> None:
    if text is not None:
        (tmp_path / "relay.toml").write_text(text, encoding="utf-8")

    output, probe = run_status(tmp_path)

    assert probe == {"code": 4, "kaggle": False, "torch": False}
    assert output["error"]["type"] == "ConfigError"
    assert str(tmp_path / "relay.toml") in output["error"]["message"]


@pytest.mark.parametrize(
    ("rule", "setting", "outcomes", "reason"),
    [
        ("no_progress_runs", "no_progress_runs = 3", ["progress", "no_progress", "no_progress", "no_progress"],
         "no better val_acc in the last 3 sessions"),
        ("max_days", "max_days = 2", ["progress", "progress"], "max_days (2) reached"),
    ],
)
def test_status_shows_stop_rule(
    tmp_path: Path, short_emulator: object, capsys: pytest.CaptureFixture[str],
    rule: str, setting: str, outcomes: list[str], reason: str,
) -> None:
    from kaggle_relay.relay import chain as chains
    from kaggle_relay.relay.config import load_config

    path = write_config(tmp_path)
    path.write_text(RELAY_TOML + f'metric = "val_acc"\nmode = "max"\n[chain.stop]\n{setting}\n', encoding="utf-8")
    ledger = Ledger.open(tmp_path / ".relay", "digits")
    checkpoint = CheckpointInfo(file="ckpt-0007.pt", epoch=7, step=7, metrics={"val_acc": 0.8}, done=False)
    for day, outcome in enumerate(outcomes, start=1):
        ledger.runs.append(Run(day=day, run_id=f"d{day}", kernel_version=day, status="complete", outcome=outcome,
                               checkpoint=checkpoint))
    ledger.data.handoff = Handoff(dataset="alice/h", version=len(outcomes), run_id=f"d{len(outcomes)}",
                                  checkpoint=checkpoint)
    ledger.save()

    outcome = chains.advance(load_config(path).chain[0])
    output, probe = run_status(tmp_path)
    code = main(["status", "--config", str(path)])

    assert outcome.state == "done"
    chain = output["chains"][0]
    assert chain["state"] == "done"
    assert chain["stopped_by"] == rule
    assert chain["stop_reason"] == reason
    assert "--retry" in chain["next"]
    text = capsys.readouterr().out
    assert code == 0
    assert f"digits: done (stopped by {rule}), day {len(outcomes)}" in text
    assert f"stopped by the {rule} rule before the training script marked the run done: {reason}" in text
    assert "next: finished" not in text
    # --retry reopens the chain; the rules run again before its next push.
    assert chains.retry_failed(load_config(path).chain[0])
    assert Ledger.open(tmp_path / ".relay", "digits").state == "idle"


def test_status_done_flag_reads_finished(tmp_path: Path, short_emulator: object) -> None:
    from kaggle_relay.relay import chain as chains
    from kaggle_relay.relay.config import load_config

    path = write_config(tmp_path)
    ledger = Ledger.open(tmp_path / ".relay", "digits")
    checkpoint = CheckpointInfo(file="ckpt-0011.pt", epoch=11, step=11, done=True)
    ledger.runs.append(Run(day=1, run_id="d1", kernel_version=1, status="complete", outcome="progress",
                           checkpoint=checkpoint))
    ledger.data.handoff = Handoff(dataset="alice/h", version=1, run_id="d1", checkpoint=checkpoint)
    ledger.save()

    chains.advance(load_config(path).chain[0])
    output, _ = run_status(tmp_path)

    chain = output["chains"][0]
    assert chain["stopped_by"] == "done_flag"
    assert chain["next"].startswith("finished")
