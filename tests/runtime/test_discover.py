"""Locations of a Kaggle-shaped tree and the walk over matching files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_relay.runtime import discover
from kaggle_relay.runtime.discover import Location, iter_candidates, iter_manifests, list_locations
from tests.runtime.builders import record, save, tiny_state, trainer_folder


def _layout(root: Path) -> None:
    (root / "input" / "plain-data").mkdir(parents=True)
    (root / "input" / "d" / "alice" / "weights").mkdir(parents=True)
    (root / "input" / "datasets" / "bob" / "weights").mkdir(parents=True)
    (root / "input" / "notebooks" / "carol" / "trainer").mkdir(parents=True)
    flat_notebook = root / "input" / "old-run"
    flat_notebook.mkdir()
    (flat_notebook / "__output__.json").write_text(json.dumps({"kernel": "dave/old-run", "version": 4}), encoding="utf-8")
    marker_only = root / "input" / "older-run"
    marker_only.mkdir()
    (marker_only / "__results__.html").write_text("<html></html>", encoding="utf-8")


def test_root_comes_from_environment(kaggle_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert discover.kaggle_root() == kaggle_root
    monkeypatch.delenv("KAGGLE_RELAY_KAGGLE_ROOT")
    assert discover.kaggle_root() == Path("/kaggle")


def test_every_layout_becomes_a_location(kaggle_root: Path) -> None:
    _layout(kaggle_root)
    found = {(loc.source, loc.dataset, loc.path.relative_to(kaggle_root).as_posix()) for loc in list_locations()}
    assert found == {
        ("working", "", "working"),
        ("input_dataset", "plain-data", "input/plain-data"),
        ("input_dataset", "alice/weights", "input/d/alice/weights"),
        ("input_dataset", "bob/weights", "input/datasets/bob/weights"),
        ("notebook_output", "carol/trainer", "input/notebooks/carol/trainer"),
        ("notebook_output", "dave/old-run", "input/old-run"),
        ("notebook_output", "older-run", "input/older-run"),
    }
    assert list_locations()[0].source == "working"


def test_walk_matches_patterns_and_skips_temporaries(kaggle_root: Path) -> None:
    working = kaggle_root / "working"
    save(working / "checkpoints" / "ckpt-step10.pt", tiny_state())
    save(working / "checkpoints" / ".relay-tmp-1a2b3c4d-ckpt-step20.pt", tiny_state())
    (working / "notes.txt").write_text("x", encoding="utf-8")
    save(working / ".ipynb_checkpoints" / "copy.pt", tiny_state())
    trainer_folder(working / "out" / "checkpoint-100", step=100)

    paths = [Path(path).relative_to(working).as_posix() for _, path in iter_candidates(list_locations(), ["*.pt", "checkpoint-*"])]
    assert paths == ["checkpoints/ckpt-step10.pt", "out/checkpoint-100"]


def test_walk_depth_is_bounded(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    save(deep / "deep.pt", tiny_state())
    location = Location(tmp_path, "working")
    assert len(list(iter_candidates([location], ["*.pt"], max_depth=3))) == 1
    assert list(iter_candidates([location], ["*.pt"], max_depth=2)) == []


def test_path_patterns_match_relative_paths(tmp_path: Path) -> None:
    save(tmp_path / "checkpoints" / "a.pt", tiny_state())
    save(tmp_path / "other" / "b.pt", tiny_state())
    found = [path for _, path in iter_candidates([Location(tmp_path, "working")], ["checkpoints/*.pt"])]
    assert found == [str(tmp_path / "checkpoints" / "a.pt")]


def test_same_slug_two_owners_told_apart(kaggle_root: Path) -> None:
    for owner, layout in (("alice", "d"), ("bob", "datasets")):
        folder = kaggle_root / "input" / layout / owner / "relay-handoff"
        save(folder / "ckpt-step100.pt", tiny_state())
        manifest = record(folder, "ckpt-step100.pt", run_id=f"run-{owner}")
        manifest.handoff = {"dataset": f"{owner}/relay-handoff", "version": 3, "run_id": f"run-{owner}"}
        manifest.save()

    seen = {location.dataset: manifest.handoff for location, manifest in iter_manifests(list_locations())}
    assert set(seen) == {"alice/relay-handoff", "bob/relay-handoff"}
    for dataset, handoff in seen.items():
        assert handoff is not None
        assert handoff["dataset"] == dataset
        assert handoff["run_id"] == f"run-{dataset.split('/')[0]}"


def test_names_with_affixes_follows_endswith_and_startswith() -> None:
    names = [
        "a.pt", ".pt", "a.pt.bak", "b.ptx", "c.pth", "checkpoint-", "checkpoint-1.pt",
        "xcheckpoint-2", "model.safetensors", "données.pt", "sample.png", "pt", "",
    ]  # fmt: skip
    affix_sets = [
        ((".pt", ".pth", ".safetensors"), ("checkpoint-",)),
        ((".pt",), ()),
        ((), ("checkpoint-",)),
        (("",), ()),  # the pattern "*" matches every name
    ]
    for suffixes, prefixes in affix_sets:
        expected = {name for name in names if name.endswith(suffixes) or name.startswith(prefixes)}
        assert discover.names_with_affixes(names, suffixes, prefixes) == expected, (suffixes, prefixes)
