"""Format detection and completeness checks on real files."""

from __future__ import annotations

import errno
import json
import zipfile
from pathlib import Path

import pytest
import torch
from torch._weights_only_unpickler import _get_allowed_globals

from kaggle_relay.runtime import formats
from kaggle_relay.runtime.peek import (
    WEIGHTS_ONLY_GLOBALS,
    PickleNotSupportedError,
    TensorRef,
    peek_pickle,
)
from tests.runtime.builders import (
    CommandPayload,
    cut,
    save,
    save_safetensors,
    tiny_state,
    trainer_folder,
)


def test_allowlist_matches_installed_torch() -> None:
    assert set(_get_allowed_globals()) == WEIGHTS_ONLY_GLOBALS


def test_torch_zip_is_complete(tmp_path: Path) -> None:
    path = save(tmp_path / "a.pt", {"model": tiny_state(), "epoch": 3})
    check = formats.check_file(path)
    assert check.format == formats.TORCH_ZIP
    assert check.complete, check.reason
    assert check.blocked == []
    assert check.tree["epoch"] == 3
    weight = check.tree["model"]["weight"]
    assert isinstance(weight, TensorRef)
    assert weight.dtype == "float32"
    assert weight.shape == (2, 4)


def test_detect_format_reads_first_bytes(tmp_path: Path) -> None:
    assert formats.detect_format(save(tmp_path / "z.pt", tiny_state())) == formats.TORCH_ZIP
    assert formats.detect_format(save(tmp_path / "l.pt", tiny_state(), legacy=True)) == formats.TORCH_LEGACY
    assert formats.detect_format(save_safetensors(tmp_path / "s.safetensors", tiny_state())) == formats.SAFETENSORS
    (tmp_path / "text.pt").write_text("hello", encoding="utf-8")
    assert formats.detect_format(tmp_path / "text.pt") == formats.UNKNOWN


def test_empty_file_is_reported_empty(tmp_path: Path) -> None:
    path = tmp_path / "ckpt-step30.pt"
    path.touch()
    check = formats.check_file(path)
    assert not check.complete
    assert check.reason.startswith("empty")


def test_cut_zip_reports_truncation_with_sizes(tmp_path: Path) -> None:
    path = save(tmp_path / "a.pt", {"model": tiny_state(), "big": torch.zeros(10_000)})
    full = path.stat().st_size
    cut(path, 0.5)
    check = formats.check_file(path)
    assert not check.complete
    assert check.format == formats.TORCH_ZIP
    assert check.reason.startswith(f"truncated ({full // 2} of at least")

    with_manifest = formats.check_file(path, expected_bytes=full)
    assert with_manifest.reason.startswith(f"truncated ({full // 2} of {full} bytes)")


def test_zip_missing_storage_entry_is_incomplete(tmp_path: Path) -> None:
    source = save(tmp_path / "a.pt", {"w": torch.ones(8), "v": torch.ones(4)})
    target = tmp_path / "b.pt"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if not info.filename.endswith("data/1"):
                new.writestr("b/" + info.filename.removeprefix("a/"), old.read(info))
    check = formats.check_file(target)
    assert not check.complete
    assert "storage entries missing: 1" in check.reason


def test_mmap_errno_becomes_readable_reason(tmp_path: Path) -> None:
    path = cut(save(tmp_path / "a.pt", {"w": torch.zeros(10_000)}), 0.6)
    with pytest.raises((OSError, RuntimeError)) as caught:
        torch.load(path, mmap=True, weights_only=True)
    reason = formats.explain_load_error(path, caught.value)
    assert reason.startswith("truncated")
    bare = OSError(errno.EINVAL, "Invalid argument")
    assert formats.explain_load_error(path, bare).startswith("truncated")


def test_legacy_file_falls_back_to_torch_load(tmp_path: Path) -> None:
    path = save(tmp_path / "old.pth", tiny_state(), legacy=True)
    check = formats.check_file(path)
    assert check.format == formats.TORCH_LEGACY
    assert check.complete, check.reason
    assert any("torch.load(weights_only=True)" in note for note in check.notes)
    assert set(check.tree) == {"weight", "bias"}


def test_cut_legacy_file_is_truncated(tmp_path: Path) -> None:
    path = save(tmp_path / "old.pth", {"w": torch.zeros(1000)}, legacy=True)
    full = path.stat().st_size
    cut(path, full - 100)
    check = formats.check_file(path)
    assert not check.complete
    assert check.reason.startswith(f"truncated ({full - 100} of {full} bytes)")


def test_safetensors_complete_and_cut(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "m.safetensors", tiny_state(), {"step": "40"})
    check = formats.check_file(path)
    assert check.complete, check.reason
    assert check.metadata == {"step": "40"}
    assert check.tree["weight"].shape == (2, 4)

    full = path.stat().st_size
    cut(path, full - 4)
    check = formats.check_file(path)
    assert check.reason.startswith(f"truncated ({full - 4} of {full} bytes)")


def test_protocol_4_pickle_is_not_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "p4.pt"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    check = formats.check_file(path)
    assert "FRAME" in check.load_error


def test_numpy_values_are_sound_but_blocked(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    path = save(tmp_path / "np.pt", {"model": tiny_state(), "rng": {"numpy": numpy.random.get_state()}, "best": numpy.float64(0.5)})
    check = formats.check_file(path)
    assert check.complete, check.reason
    assert "numpy.ndarray" in check.blocked
    assert any(name.endswith("multiarray.scalar") for name in check.blocked)


def test_peek_rejects_unknown_persistent_id() -> None:
    data = b"\x80\x02X\x03\x00\x00\x00abc\x85Q."
    with pytest.raises(PickleNotSupportedError):
        peek_pickle(data)


def test_trainer_folder_complete_and_partial(tmp_path: Path) -> None:
    complete = formats.check_file(trainer_folder(tmp_path / "out" / "checkpoint-100", step=100))
    assert complete.format == formats.DIRECTORY
    assert complete.complete, complete.reason

    partial_dir = trainer_folder(tmp_path / "out" / "checkpoint-200", step=200, parts=("weights",))
    cut(partial_dir / "model.safetensors", 0.5)
    partial = formats.check_file(partial_dir)
    assert not partial.complete
    assert "missing optimizer.pt" in partial.reason
    assert "missing trainer_state.json" in partial.reason
    assert "model.safetensors truncated" in partial.reason


def _both_readers(data: bytes) -> tuple[object, object]:
    from kaggle_relay.runtime import peek

    exact = peek._Interpreter(data, 0, None)
    exact_root = exact.run()
    fast = peek._peek_fast(data, peek._zip_storage)
    return (exact_root, sorted(exact.blocked), sorted(exact.storages)), (fast.root, sorted(fast.blocked), sorted(fast.storages))


def test_fast_and_exact_readers_agree(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    from kaggle_relay.runtime import zipdir

    objects = {
        "state": {"model": tiny_state(), "epoch": 2, "metrics": {"loss": 0.5}, "name": "x", "raw": b"ab"},
        "numpy": {"rng": numpy.random.get_state(), "best": numpy.float64(0.25)},
        "loss": {"loss": torch.nn.MSELoss(), "p": torch.nn.Parameter(torch.ones(3))},
        "payload": {"model": tiny_state(), "x": CommandPayload(tmp_path / "payload-ran")},
    }
    for name, obj in objects.items():
        path = save(tmp_path / f"{name}.pt", obj)
        with open(path, "rb") as handle:
            entries = zipdir.read_directory(handle, path.stat().st_size)
            data = zipdir.read_entry(handle, entries[f"{name}/data.pkl"])
        exact, fast = _both_readers(data)
        assert repr(exact[0]) == repr(fast[0]), name
        assert exact[1:] == fast[1:], name
    assert not (tmp_path / "payload-ran").exists()


# --- a file cut at any offset, or damaged, is reported and never raises ------------------------


def _training_state() -> dict[str, object]:
    model = torch.nn.Linear(16, 8)
    return {"model": model.state_dict(), "optimizer": torch.optim.Adam(model.parameters()).state_dict(), "step": 5}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_file_cut_at_every_offset_is_truncated(tmp_path: Path, legacy: bool) -> None:
    data = save(tmp_path / "full.pt", _training_state(), legacy=legacy).read_bytes()
    target = tmp_path / "cut.pt"
    for length in range(1, len(data), 3):
        target.write_bytes(data[:length])
        check = formats.check_file(target, legacy_torch_load=False)
        assert not check.complete, length
        assert check.reason.startswith(f"truncated ({length} "), (length, check.reason)
        assert check.load_error == "", (length, check.load_error)


def test_safetensors_cut_at_every_offset_is_reported(tmp_path: Path) -> None:
    data = save_safetensors(tmp_path / "full.safetensors", tiny_state(), {"step": "5"}).read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    target = tmp_path / "cut.safetensors"
    for length in range(1, len(data)):
        target.write_bytes(data[:length])
        check = formats.check_file(target)
        assert not check.complete, length
        if length < 9:
            assert check.reason.startswith(f"truncated or not a checkpoint ({length} bytes)"), check.reason
        elif length < header_end:
            assert check.reason.startswith(f"truncated ({length} bytes): the file ends inside its"), check.reason
        else:
            assert check.reason == f"truncated ({length} of {len(data)} bytes): the file ends inside the tensor data"


def test_legacy_file_cut_inside_its_pickles_names_truncation(tmp_path: Path) -> None:
    path = save(tmp_path / "old.pth", _training_state(), legacy=True)
    full = path.stat().st_size
    cut(path, 0.3)
    check = formats.check_file(path, expected_bytes=full)
    assert check.reason == f"truncated ({int(full * 0.3)} of {full} bytes): the file ends inside its pickled header"


def test_zip_with_short_storage_entry_is_incomplete(tmp_path: Path) -> None:
    source = save(tmp_path / "a.pt", {"w": torch.ones(8), "v": torch.ones(4)})
    target = tmp_path / "b.pt"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename.endswith("data/1"):
                data = data[:6]
            new.writestr("b/" + info.filename.removeprefix("a/"), data)
    check = formats.check_file(target)
    assert not check.complete
    assert check.reason == "incomplete: storage entries too short: 1 (6 of 16 bytes)"


def test_zip_with_bytes_missing_in_the_middle_is_never_complete(tmp_path: Path) -> None:
    data = save(tmp_path / "full.pt", _training_state()).read_bytes()
    target = tmp_path / "holed.pt"
    for start in range(0, len(data) - 1, 5):
        for length in (1, 16):
            target.write_bytes(data[:start] + data[start + length :])
            check = formats.check_file(target)
            assert not check.complete, (start, length)
            assert check.reason or check.load_error, (start, length)


def test_damaged_zip_directory_is_reported_not_raised(tmp_path: Path) -> None:
    data = save(tmp_path / "full.pt", _training_state()).read_bytes()
    directory_start = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x01\x02"))
    target = tmp_path / "flipped.pt"
    for position in range(directory_start, len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        target.write_bytes(bytes(damaged))
        formats.check_file(target)  # must return a verdict for every byte, never raise


def test_pickle_string_that_is_not_utf8_is_malformed(tmp_path: Path) -> None:
    path = save(tmp_path / "a.pt", {"weights": torch.ones(2)}, legacy=True)
    data = path.read_bytes().replace(b"weights", b"\xafeights", 1)
    path.write_bytes(data)
    check = formats.check_file(path, legacy_torch_load=False)
    assert not check.complete
    assert check.load_error.startswith("malformed pickle: a string near byte ")


def _sharded_folder(folder: Path) -> Path:
    trainer_folder(folder, step=300, parts=("optimizer", "scheduler", "state"))
    first, second = {"a.weight": torch.ones(4, 4)}, {"b.weight": torch.ones(2, 4)}
    save_safetensors(folder / "model-00001-of-00002.safetensors", first)
    save_safetensors(folder / "model-00002-of-00002.safetensors", second)
    index = {"weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


def test_sharded_trainer_folder_complete(tmp_path: Path) -> None:
    check = formats.check_file(_sharded_folder(tmp_path / "checkpoint-300"))
    assert check.complete, check.reason
    assert set(check.tree["model"]) == {"a.weight", "b.weight"}


def test_sharded_trainer_folder_missing_shard_is_partial(tmp_path: Path) -> None:
    folder = _sharded_folder(tmp_path / "checkpoint-300")
    (folder / "model-00002-of-00002.safetensors").unlink()
    check = formats.check_file(folder)
    assert not check.complete
    assert check.reason == "partial: missing weight shards: model-00002-of-00002.safetensors"


def test_sharded_trainer_folder_shard_cut_in_header_is_partial(tmp_path: Path) -> None:
    folder = _sharded_folder(tmp_path / "checkpoint-300")
    cut(folder / "model-00001-of-00002.safetensors", 20)
    check = formats.check_file(folder)
    assert not check.complete
    assert check.reason.startswith("partial: model-00001-of-00002.safetensors truncated (20 bytes): the file ends inside its")


def test_trainer_folder_with_cut_state_json_is_partial(tmp_path: Path) -> None:
    folder = trainer_folder(tmp_path / "checkpoint-400", step=400)
    cut(folder / "trainer_state.json", 10)
    check = formats.check_file(folder)
    assert not check.complete
    assert check.reason.startswith("partial: trainer_state.json cannot be read (")


def test_empty_trainer_folder_names_every_missing_part(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    check = formats.check_file(folder)
    assert not check.complete
    assert check.reason == (
        "partial: missing weights (one of model.safetensors, pytorch_model.bin, adapter_model.safetensors, "
        "adapter_model.bin); missing optimizer.pt; missing scheduler.pt; missing trainer_state.json"
    )


def test_overrun_count_follows_storage_bytes_needed() -> None:
    from kaggle_relay.runtime.peek import StorageRef

    storage = StorageRef(key="0", dtype="float32", numel=12)
    cases = [
        ((12,), (1,), 0),  # fills the storage
        ((12,), (1,), 1),  # one element past the end
        ((3, 4), (4, 1), 0),
        ((4, 3), (1, 4), 0),  # transposed view
        ((4, 4), (4, 1), 0),
        ((0, 99), (99, 1), 50),  # empty: reaches nothing
        ((), (), 11),  # scalar at the last element
        ((), (), 12),
        ((3,), (-1,), 2),  # negative stride
        ((2,), (-1,), 13),  # extent 0 with an offset past the end
        ((6, 2), (2,), 0),  # stride shorter than shape
        ((2, 5), (-1,), 13),  # the same, spanning 0 elements from an offset past the end
        ((6, 0), (2,), 0),  # a size of 0 without a stride is not paired
    ]
    for shape, stride, offset in cases:
        tensor = TensorRef("float32", shape, storage, offset, stride)
        expected = int(tensor.storage_bytes_needed() > storage.nbytes)
        assert formats._count_overruns([tensor]) == expected, (shape, stride, offset)
    assert formats._count_overruns([TensorRef("float32", (99,))]) == 0
