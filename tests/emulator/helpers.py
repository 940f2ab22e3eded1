"""Helpers for emulator tests: kernel and dataset folders the real client pushes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import EMULATOR_USER

END_STATES = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")


def kernel_folder(
    root: Path,
    slug: str,
    code: str,
    *,
    kernel_type: str = "script",
    dataset_sources: list[str] | None = None,
    kernel_sources: list[str] | None = None,
    **metadata: Any,
) -> Path:
    """Write a kernel folder (code file and kernel-metadata.json) for ``kernels_push``."""
    folder = root / f"kernel-{slug}"
    folder.mkdir(parents=True, exist_ok=True)
    code_file = "main.ipynb" if kernel_type == "notebook" else "main.py"
    (folder / code_file).write_text(code, encoding="utf-8")
    meta = {
        "id": f"{EMULATOR_USER}/{slug}",
        "title": slug.replace("-", " ").title(),
        "code_file": code_file,
        "language": "python",
        "kernel_type": kernel_type,
        "is_private": True,
        "enable_gpu": False,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": dataset_sources or [],
        "kernel_sources": kernel_sources or [],
    }
    meta.update(metadata)
    (folder / "kernel-metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def notebook(*cells: str, kernelspec: bool = True) -> str:
    """A minimal nbformat 4 notebook with one code cell per source string."""
    metadata: dict[str, Any] = {"language_info": {"name": "python"}}
    if kernelspec:
        metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
    return json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": metadata,
            "cells": [
                {"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": source,
                 "outputs": [], "execution_count": None}
                for i, source in enumerate(cells)
            ],
        }
    )  # fmt: skip


def dataset_folder(root: Path, slug: str, files: dict[str, bytes | str], **metadata: Any) -> Path:
    """Write a dataset folder (files, sub-folders and dataset-metadata.json)."""
    folder = root / f"dataset-{slug}-{time.monotonic_ns()}"
    folder.mkdir(parents=True)
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
    meta = {
        "id": f"{EMULATOR_USER}/{slug}",
        "title": slug.replace("-", " ").title(),
        "licenses": [{"name": "CC0-1.0"}],
    }
    meta.update(metadata)
    (folder / "dataset-metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def status_name(response: Any) -> str:
    return str(response.status.name)


def wait_for_kernel(api: Any, kernel: str, timeout: float = 60.0) -> Any:
    """Poll kernels_status until the version ends; return the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = api.kernels_status(kernel)
        if status_name(answer) in END_STATES:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{kernel} still {status_name(answer)} after {timeout} s")
        time.sleep(0.1)


def wait_for_dataset(api: Any, dataset: str, timeout: float = 30.0) -> str:
    """Poll dataset_status until READY or FAILED; return the status ('ready' or 'failed')."""
    deadline = time.monotonic() + timeout
    while True:
        status = api.dataset_status(dataset)
        if status in ("ready", "failed"):
            return str(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"{dataset} still {status} after {timeout} s")
        time.sleep(0.1)
