"""Tests of load_checkpoint: weights_only by default, trust per source, mmap, readable errors."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy
import pytest
import torch

from kaggle_relay.errors import CheckpointInvalidError, UnsafeCheckpointError
from kaggle_relay.runtime.load import load_checkpoint
from kaggle_relay.runtime.trust import TrustPolicy
from kaggle_relay.runtime.validate import validate_checkpoint


class RunsCode:
    """An object whose unpickling would call os.system."""

    def __reduce__(self) -> tuple:
        import os

        return (os.system, ("echo hacked",))


def numpy_checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.ones(2)}, "best": numpy.float64(0.5)}, path)
    return path


NUMPY_GLOBALS = ["numpy._core.multiarray.scalar", "numpy.dtype", "numpy.dtypes.Float64DType"]


def test_load_zip_is_memory_mapped(kaggle_root: Path) -> None:
    path = kaggle_root / "working" / "a.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], torch.arange(4.0))
    maps = Path("/proc/self/maps").read_text(encoding="utf-8")
    assert str(path) in maps


def test_load_legacy_file_without_mmap(kaggle_root: Path) -> None:
    path = kaggle_root / "working" / "legacy.pt"
    torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(path, mmap=True)["w"], torch.arange(4.0))


def test_load_safetensors(kaggle_root: Path) -> None:
    from safetensors.torch import save_file

    path = kaggle_root / "working" / "w.safetensors"
    save_file({"w": torch.ones(3)}, str(path))
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))


def test_load_blocks_numpy_by_default_naming_globals(kaggle_root: Path) -> None:
    path = numpy_checkpoint(kaggle_root / "working" / "np.pt")
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(path)
    assert any("numpy" in name for name in caught.value.globals)
    assert "TrustPolicy" in caught.value.hint


def test_load_allows_named_globals_for_trusted_source(kaggle_root: Path) -> None:
    path = numpy_checkpoint(kaggle_root / "working" / "np.pt")
    policy = TrustPolicy(sources={"working": "globals"}, globals=NUMPY_GLOBALS)
    assert load_checkpoint(path, trust=policy)["best"] == 0.5


def test_load_keeps_input_dataset_weights_only(kaggle_root: Path) -> None:
    path = numpy_checkpoint(kaggle_root / "input" / "someone-else" / "np.pt")
    policy = TrustPolicy(sources={"working": "full"}, globals=NUMPY_GLOBALS)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path, trust=policy)


def test_load_trusts_dataset_named_in_policy(kaggle_root: Path) -> None:
    path = numpy_checkpoint(kaggle_root / "input" / "mine" / "np.pt")
    candidate = validate_checkpoint(path, source="input_dataset", dataset="alice/mine")
    policy = TrustPolicy(datasets={"alice/mine": "full"})
    assert load_checkpoint(candidate, trust=policy)["best"] == 0.5


def test_load_full_trust_still_refuses_code(kaggle_root: Path, tmp_path: Path) -> None:
    path = kaggle_root / "working" / "evil.pt"
    torch.save({"x": RunsCode()}, path)
    marker = tmp_path / "ran"
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(path, trust="full")
    assert "os.system" in caught.value.globals or "posix.system" in caught.value.globals
    assert not marker.exists()


def test_load_truncated_file_has_readable_reason(kaggle_root: Path) -> None:
    path = kaggle_root / "working" / "cut.pt"
    torch.save({"w": torch.zeros(10_000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointInvalidError) as caught:
        load_checkpoint(path)
    assert "Errno 22" not in caught.value.reason.split("(")[0]
    assert (
        "truncated" in caught.value.reason
        or "cut" in caught.value.reason
        or "missing" in caught.value.reason
    )


def test_load_strips_prefix_on_request(kaggle_root: Path) -> None:
    path = kaggle_root / "working" / "ddp.pt"
    state = collections.OrderedDict(
        [("module.fc.weight", torch.ones(2, 2)), ("module.fc.bias", torch.ones(2))]
    )
    torch.save({"model": state, "epoch": 1}, path)
    loaded = load_checkpoint(path, strip_prefix=True)
    assert list(loaded["model"]) == ["fc.weight", "fc.bias"]
    assert loaded["epoch"] == 1


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_load_cut_at_any_offset_says_truncated(kaggle_root: Path, legacy: bool) -> None:
    path = kaggle_root / "working" / "full.pt"
    torch.save({"w": torch.zeros(1000), "step": 3}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    cut = kaggle_root / "working" / "cut.pt"
    for length in range(1, len(data), 11):
        cut.write_bytes(data[:length])
        with pytest.raises(CheckpointInvalidError) as caught:
            load_checkpoint(cut)
        assert caught.value.reason.startswith(f"truncated ({length} "), (length, caught.value.reason)
        assert "Errno 22" not in caught.value.reason.split("(torch.load reported")[0]


def test_load_half_file_reason_names_sizes(kaggle_root: Path) -> None:
    path = kaggle_root / "working" / "cut.pt"
    torch.save({"w": torch.zeros(10_000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointInvalidError) as caught:
        load_checkpoint(path)
    assert caught.value.reason.startswith(f"truncated ({len(data) // 2} of at least ")
    assert "the zip directory at the end is missing" in caught.value.reason


def test_load_strips_nested_wrappers_on_request(kaggle_root: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    # The same keys as DataParallel(torch.compile(DataParallel(model))), without compiling.
    compiled = torch.nn.Module()
    compiled._orig_mod = torch.nn.DataParallel(model)
    wrapped = torch.nn.DataParallel(compiled)
    path = kaggle_root / "working" / "wrapped.pt"
    torch.save({"model": wrapped.state_dict(), "step": 4}, path)
    assert next(iter(wrapped.state_dict())).startswith("module._orig_mod.module.")

    loaded = load_checkpoint(path, strip_prefix=True)

    fresh = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    fresh.load_state_dict(loaded["model"])
    assert torch.equal(fresh[0].weight, model[0].weight)
    assert loaded["step"] == 4
    again = load_checkpoint(path, strip_prefix=True)
    assert list(again["model"]) == list(loaded["model"])


def test_load_never_strips_mixed_keys(kaggle_root: Path) -> None:
    path = kaggle_root / "working" / "mixed.pt"
    torch.save({"model": {"module.fc.weight": torch.ones(2), "head.bias": torch.ones(1)}}, path)
    with pytest.raises(CheckpointInvalidError, match="'head.bias' does not"):
        load_checkpoint(path, strip_prefix=True)
    assert list(load_checkpoint(path)["model"]) == ["module.fc.weight", "head.bias"]


def test_load_full_trust_of_missing_main_class_is_readable(kaggle_root: Path) -> None:
    from tests.runtime.builders import save_with_main_class

    path = save_with_main_class(kaggle_root / "working" / "main.pt")
    with pytest.raises(CheckpointInvalidError) as caught:
        load_checkpoint(path, trust="full")
    assert "TrainConfig" in caught.value.reason
    assert caught.value.hint == "define or import it before loading"
