"""Tests of hashing a file while it is written: TrailingHasher with AppendingWriter."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch

from kaggle_relay.runtime.hashing import AppendingWriter, BackgroundSha256, TrailingHasher


@pytest.mark.parametrize("writeback_bytes", [0, 256 << 10])
def test_trailing_hash_matches_file(tmp_path: Path, writeback_bytes: int) -> None:
    path = tmp_path / "data.bin"
    chunks = [
        random.Random(seed).randbytes(size)
        for seed, size in enumerate([1, 7, 300_000, 0, 2_000_000, 65])
    ]
    with (
        open(path, "xb", buffering=0) as raw,
        TrailingHasher(path, writeback_bytes=writeback_bytes) as hasher,
    ):
        writer = AppendingWriter(raw, hasher)
        for chunk in chunks:
            assert writer.write(chunk) == len(chunk)
        digest = hasher.finish()

    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert hasher.size == path.stat().st_size


def test_trailing_hash_of_torch_save(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    state = {"model": {f"w{index}": torch.full((300_000,), float(index)) for index in range(4)}}
    with open(path, "xb", buffering=0) as raw, TrailingHasher(path) as hasher:
        torch.save(state, AppendingWriter(raw, hasher))  # type: ignore[arg-type]
        digest = hasher.finish()

    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w3"], state["model"]["w3"])


def test_trailing_hash_rejects_missing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 1000)
    with TrailingHasher(path) as hasher:
        hasher.advance(2000)
        with pytest.raises(OSError, match="file ended at byte 1000"):
            hasher.finish()


def test_trailing_hasher_close_stops_thread(tmp_path: Path) -> None:
    path = tmp_path / "abandoned.bin"
    path.write_bytes(b"")
    hasher = TrailingHasher(path)
    hasher.close()
    assert not hasher._thread.is_alive()


def test_appending_writer_cannot_seek(tmp_path: Path) -> None:
    path = tmp_path / "append.bin"
    with open(path, "xb", buffering=0) as raw, TrailingHasher(path) as hasher:
        writer = AppendingWriter(raw, hasher)
        assert not hasattr(writer, "seek")
        assert not hasattr(writer, "tell")
        hasher.finish()


def test_background_sha256_hashes_in_order_and_hands_back() -> None:
    blocks = [bytes([index]) * (1 << 20) for index in range(20)]
    returned: list[bytes] = []
    hasher = BackgroundSha256(depth=2, hashed=returned.append)
    for block in blocks:
        hasher.add(block)

    digest = hasher.finish()

    assert digest == hashlib.sha256(b"".join(blocks)).hexdigest()
    assert returned == blocks
