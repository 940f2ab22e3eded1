"""A chain whose kernel is a notebook: the bundled runtime arrives as its first cell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kaggle_relay.relay import chain as chains
from kaggle_relay.relay.config import load_config
from tests.relay.chainkit import check_chain, short_emulator, write_step_project

__all__ = ["short_emulator"]


def as_notebook(project_kernel: Path) -> None:
    """Turn the project's script kernel into a one-cell notebook kernel."""
    metadata_path = project_kernel / "kernel-metadata.json"
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    script = project_kernel / metadata["code_file"]
    notebook = {
        "cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": script.read_text(encoding="utf-8")}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (project_kernel / "train.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    script.unlink()
    metadata.update(code_file="train.ipynb", kernel_type="notebook")
    metadata_path.write_text(json.dumps(metadata, indent=2), encoding="utf-8")


def test_notebook_chain_resumes_across_sessions(tmp_path: Path, short_emulator: Any) -> None:
    project = write_step_project(tmp_path / "p", epochs=2)
    as_notebook(project.folder / "kernel")
    chain = load_config(project.config).chain[0]

    outcome = chains.advance(chain, wait=True)
    ledger = check_chain(short_emulator, project)

    assert outcome.state == "done", ledger.data.model_dump_json(indent=1)
    assert ledger.days == 2
    assert [run.status for run in ledger.runs] == ["complete", "complete"]
    handoff = ledger.data.handoff
    assert handoff is not None and handoff.checkpoint is not None
    assert handoff.checkpoint.epoch == 1
    assert handoff.checkpoint.done
