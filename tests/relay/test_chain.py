"""The chain state machine end to end: the real kaggle client, the emulator, real training sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_relay.relay import chain as chains
from kaggle_relay.relay.config import load_config
from kaggle_relay.relay.ledger import Ledger
from tests.relay.chainkit import OWNER, short_emulator, write_project

__all__ = ["short_emulator"]

pytestmark = pytest.mark.slow

# The chain publishes through the Kaggle layer's publish module; skip until it is in the tree.
pytest.importorskip("kaggle_relay.relay.publish")


def dataset_versions(emulator: object, dataset: str) -> list[int]:
    from kaggle_relay.relay import client, datasets
    from kaggle_relay.relay.refs import DatasetRef

    api = client.connect(endpoint=emulator.url)  # type: ignore[attr-defined]
    found = datasets._versions(datasets._get_dataset(api, DatasetRef.parse(dataset)))
    return sorted(version.number for version in found)


def test_chain_runs_three_sessions_to_done(tmp_path: Path, short_emulator: object) -> None:
    project = write_project(tmp_path / "project")
    chain = load_config(project.config).chain[0]

    outcome = chains.advance(chain, wait=True)

    ledger = Ledger.open(project.folder / ".relay", chain.name)
    assert outcome.state == "done", ledger.data.model_dump_json(indent=1)
    assert ledger.days >= 3
    handoff = ledger.data.handoff
    assert handoff is not None and handoff.checkpoint is not None
    assert handoff.checkpoint.epoch == 5
    assert handoff.checkpoint.done
    published = [run.published.version for run in ledger.runs if run.published]
    assert published == sorted(set(published))
    assert dataset_versions(short_emulator, f"{OWNER}/relay-chain-test-handoff") == published
