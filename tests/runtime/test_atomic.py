"""Atomic writes: the temporary file lives beside its target, whatever the temp folder or name length."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kaggle_relay.runtime import atomic
from kaggle_relay.runtime.session import start_session

OTHER_MOUNT = Path("/dev/shm")


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.skipif(
    not OTHER_MOUNT.is_dir() or os.stat(OTHER_MOUNT).st_dev == os.stat("/tmp").st_dev,
    reason="needs /dev/shm on another file system than /tmp",
)
def test_save_with_temp_folder_on_other_mount(tmp_path: Path) -> None:
    other = OTHER_MOUNT / f"relay-test-{os.getpid()}-{tmp_path.name}"
    other.mkdir()
    script = textwrap.dedent(
        """
        import sys, tempfile, torch
        from kaggle_relay.runtime.save import save_checkpoint
        assert tempfile.gettempdir() == sys.argv[2], tempfile.gettempdir()
        save_checkpoint({"model": {"w": torch.ones(4)}}, "ckpt-step10.pt", folder=sys.argv[1], step=10)
        """
    )
    folder = tmp_path / "working" / "checkpoints"
    environment = {**os.environ, "TMPDIR": str(other), "KAGGLE_RELAY_KAGGLE_ROOT": str(tmp_path)}
    try:
        subprocess.run([sys.executable, "-c", script, str(folder), str(other)], check=True, env=environment)
        assert list(other.iterdir()) == []
    finally:
        for path in other.iterdir():
            path.unlink()
        other.rmdir()
    assert sorted(path.name for path in folder.iterdir()) == ["ckpt-step10.pt", "relay-manifest.json"]


def test_temporary_name_starts_with_prefix_beside_target(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "ckpt.pt"
    temporary = atomic.temporary_path(target)
    assert temporary.parent == target.parent
    assert temporary.name.startswith(atomic.TEMP_PREFIX)
    assert temporary.name.endswith("-ckpt.pt")
    assert atomic.is_temporary(temporary.name)


@pytest.mark.parametrize("length", [200, 236, 250, 255])
def test_atomic_write_accepts_longest_names(tmp_path: Path, length: int) -> None:
    target = tmp_path / ("n" * (length - 3) + ".pt")
    atomic.write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    assert [path.name for path in tmp_path.iterdir()] == [target.name]


def test_temporary_name_of_multibyte_name_stays_valid_utf8(tmp_path: Path) -> None:
    target = tmp_path / ("\u00e9" * 127)  # 254 bytes in UTF-8
    temporary = atomic.temporary_path(target)
    assert len(temporary.name.encode("utf-8")) <= atomic.NAME_MAX
    assert temporary.name.startswith(atomic.TEMP_PREFIX)
    atomic.write_text(target, "ok")
    assert target.read_text(encoding="utf-8") == "ok"


def test_session_start_cleans_temporaries_only_in_working(kaggle_root: Path) -> None:
    working_leftover = kaggle_root / "working" / "checkpoints" / f"{atomic.TEMP_PREFIX}1a2b3c4d-ckpt.pt"
    working_leftover.parent.mkdir(parents=True)
    working_leftover.write_bytes(b"partial")
    dataset = kaggle_root / "input" / "old-run"
    dataset.mkdir()
    (dataset / f"{atomic.TEMP_PREFIX}5e6f7a8b-ckpt.pt").write_bytes(b"someone else's partial file")
    (dataset / "notes.txt").write_text("kept", encoding="utf-8")
    before = _snapshot(kaggle_root / "input")

    start_session(patterns=["*.pt"], report=False)

    assert not working_leftover.exists()
    assert _snapshot(kaggle_root / "input") == before
