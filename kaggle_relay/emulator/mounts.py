"""Attach datasets and kernel outputs under a run's ``input/`` folder, read-only.

Layouts: ``flat`` puts every source at ``input/<slug>/``; ``nested`` puts
datasets at ``input/datasets/<owner>/<slug>/`` and kernel outputs at
``input/notebooks/<owner>/<slug>/``. A mounted kernel output gets
``__output__.json`` (``{"kernel": "owner/slug", "version": N}``) at its top.

A dataset source ``owner/slug/N`` mounts version N if it is READY; a source
``owner/slug`` mounts the latest READY version when the run starts, so a
version still processing is not attached. A kernel source ``owner/slug``
mounts the output of the latest version that ended, ``owner/slug/N`` that
version's output. Files are hard-linked when possible, else copied.
In the flat layout, a second source with a slug already mounted goes to
``input/<slug>-<owner>/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kaggle_relay.emulator.server import Emulator

log = logging.getLogger(__name__)


class Mounts:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def attach(self, version: dict[str, Any], input_dir: Path) -> list[dict[str, Any]]:
        """Mount every source of ``version`` under ``input_dir``; return what was mounted."""
        mounted = []
        for source in version.get("dataset_sources", []):
            found = self.emulator.datasets.resolve_ready(source)
            if found is None:
                log.warning("dataset source %s has no READY version; not attached", source)
                continue
            ref, number, files = found
            target = self._target(input_dir, "datasets", ref)
            self._link_files(files, target)
            mounted.append({"source": source, "version": number, "path": target.name})
        for source in version.get("kernel_sources", []):
            found_output = self.emulator.kernels.resolve_output(source)
            if found_output is None:
                log.warning("kernel source %s has no finished version; not attached", source)
                continue
            ref, number, files = found_output
            target = self._target(input_dir, "notebooks", ref)
            self._link_files(files, target)
            marker_path = target / "__output__.json"
            # Unlink first: the name may be a hard link into the previous run's files.
            marker_path.unlink(missing_ok=True)
            marker_path.write_text(json.dumps({"kernel": ref, "version": number}), encoding="utf-8")
            mounted.append({"source": source, "version": number, "path": target.name})
        _make_read_only(input_dir)
        return mounted

    def _target(self, input_dir: Path, kind: str, ref: str) -> Path:
        owner, slug = ref.split("/")
        if self.emulator.config.input_layout == "nested":
            target = input_dir / kind / owner / slug
        else:
            target = input_dir / slug
            if target.exists():
                target = input_dir / f"{slug}-{owner}"
        target.mkdir(parents=True)
        return target

    def _link_files(self, files: list[dict[str, Any]], target: Path) -> None:
        for entry in files:
            source = self.emulator.store.resolve(entry["path"])
            destination = target / entry["name"]
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, destination)
            except OSError:
                shutil.copy2(source, destination)


def _make_read_only(input_dir: Path) -> None:
    """Remove write permission under ``input_dir`` (root ignores it, as tests running as root show)."""
    read_only_file = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    read_only_dir = read_only_file | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    for folder, dirs, files in os.walk(input_dir, topdown=False):
        for name in files:
            os.chmod(os.path.join(folder, name), read_only_file)
        for name in dirs:
            os.chmod(os.path.join(folder, name), read_only_dir)
    os.chmod(input_dir, read_only_dir)
