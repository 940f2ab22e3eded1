"""Datasets, versions, processing and mounting through the real kaggle client."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from requests.exceptions import HTTPError

from tests.conftest import EMULATOR_USER
from tests.emulator.helpers import (
    dataset_folder,
    kernel_folder,
    status_name,
    wait_for_dataset,
    wait_for_kernel,
)

DATASET = f"{EMULATOR_USER}/handoff-data"

LIST_INPUT = """\
import json, os
root = os.environ['KAGGLE_RELAY_KAGGLE_ROOT'] + '/input'
found = {}
for folder, _, files in os.walk(root):
    for name in files:
        path = os.path.join(folder, name)
        found[os.path.relpath(path, root)] = open(path, encoding='utf-8').read()
json.dump(found, open('inputs.json', 'w'))
"""


def file_names(api, dataset: str) -> list[str]:
    return sorted(item.name for item in api.dataset_list_files(dataset, page_size=100).files)


def versions(api, dataset: str) -> dict:
    return json.loads(api.dataset_status(dataset, format="json(status,current_version_number)"))


def create(api, tmp_path: Path, files: dict, **options) -> None:
    dir_mode = options.pop("dir_mode", "skip")
    folder = dataset_folder(tmp_path, "handoff-data", files, **options)
    answer = api.dataset_create_new(str(folder), quiet=True, dir_mode=dir_mode)
    assert answer.status == "ok", answer.error


def new_version(api, tmp_path: Path, files: dict, notes: str, dir_mode: str = "zip") -> None:
    folder = dataset_folder(tmp_path, "handoff-data", files)
    answer = api.dataset_create_version(str(folder), notes, quiet=True, dir_mode=dir_mode)
    assert answer.status == "ok", answer.error


def run_and_read_inputs(api, tmp_path: Path, slug: str, sources: list[str]) -> dict:
    folder = kernel_folder(tmp_path, slug, LIST_INPUT, dataset_sources=sources)
    assert not api.kernels_push(str(folder)).error
    assert status_name(wait_for_kernel(api, f"{EMULATOR_USER}/{slug}")) == "COMPLETE"
    api.kernels_output(f"{EMULATOR_USER}/{slug}", str(tmp_path / slug))
    inputs: dict = json.loads((tmp_path / slug / "inputs.json").read_text())
    return inputs


def test_new_dataset_processes_then_is_ready(kaggle_api, tmp_path: Path) -> None:
    create(kaggle_api, tmp_path, {"a.txt": "a"})

    assert kaggle_api.dataset_status(DATASET) == "blobs_received"
    assert wait_for_dataset(kaggle_api, DATASET) == "ready"
    assert versions(kaggle_api, DATASET) == {"status": "ready", "current_version_number": 1}
    assert file_names(kaggle_api, DATASET) == ["a.txt"]


def test_three_versions_with_subfolders_in_zip_mode(kaggle_api, tmp_path: Path) -> None:
    create(
        kaggle_api, tmp_path, {"ckpt/step_1/model.pt": "1", "tokenizer.json": "{}"}, dir_mode="zip"
    )
    wait_for_dataset(kaggle_api, DATASET)
    new_version(
        kaggle_api, tmp_path, {"ckpt/step_2/model.pt": "2", "tokenizer.json": "{}"}, "run-b day 2"
    )
    wait_for_dataset(kaggle_api, DATASET)
    new_version(kaggle_api, tmp_path, {"ckpt/step_3/model.pt": "3"}, "run-b day 3", dir_mode="tar")
    wait_for_dataset(kaggle_api, DATASET)

    assert file_names(kaggle_api, f"{DATASET}/1") == ["ckpt/step_1/model.pt", "tokenizer.json"]
    assert file_names(kaggle_api, f"{DATASET}/2") == ["ckpt/step_2/model.pt", "tokenizer.json"]
    # Each version is a full snapshot: tokenizer.json was not uploaded again, so v3 lacks it.
    assert file_names(kaggle_api, DATASET) == ["ckpt/step_3/model.pt"]
    client = kaggle_api.build_kaggle_client()
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest

    request = ApiGetDatasetRequest()
    request.owner_slug, request.dataset_slug = EMULATOR_USER, "handoff-data"
    with client:
        dataset = client.datasets.dataset_api_client.get_dataset(request)
    assert dataset.current_version_number == 3
    assert [v.version_notes for v in dataset.versions] == [
        "Initial release",
        "run-b day 2",
        "run-b day 3",
    ]


def test_default_dir_mode_drops_subfolders(kaggle_api, tmp_path: Path) -> None:
    create(kaggle_api, tmp_path, {"ckpt/step_1/model.pt": "1", "top.txt": "t"})
    wait_for_dataset(kaggle_api, DATASET)

    assert file_names(kaggle_api, DATASET) == ["top.txt"]


def test_new_version_while_processing_is_forbidden(kaggle_api, tmp_path: Path) -> None:
    create(kaggle_api, tmp_path, {"a.txt": "a"})

    with pytest.raises(HTTPError) as raised:
        new_version(kaggle_api, tmp_path, {"b.txt": "b"}, "too early")
    assert raised.value.response.status_code == 403
    assert "still being processed" in str(raised.value)
    wait_for_dataset(kaggle_api, DATASET)
    new_version(kaggle_api, tmp_path, {"b.txt": "b"}, "in time")


def test_failed_version_fault_ends_failed(kaggle_api, tmp_path: Path, emulator) -> None:
    create(kaggle_api, tmp_path, {"a.txt": "a"})
    wait_for_dataset(kaggle_api, DATASET)
    emulator.faults.fail_next_dataset_version()
    new_version(kaggle_api, tmp_path, {"b.txt": "b"}, "will fail")

    assert wait_for_dataset(kaggle_api, DATASET) == "failed"
    assert file_names(kaggle_api, DATASET) == ["a.txt"]
    new_version(kaggle_api, tmp_path, {"c.txt": "c"}, "after the failure")
    assert wait_for_dataset(kaggle_api, DATASET) == "ready"


def test_processing_version_is_not_mounted_but_pinned_one_is(kaggle_api, tmp_path: Path) -> None:
    create(kaggle_api, tmp_path, {"day.txt": "one"})
    wait_for_dataset(kaggle_api, DATASET)
    new_version(kaggle_api, tmp_path, {"day.txt": "two"}, "day two")

    unpinned = run_and_read_inputs(kaggle_api, tmp_path, "reader-early", [DATASET])
    assert unpinned == {"handoff-data/day.txt": "one"}
    wait_for_dataset(kaggle_api, DATASET)
    pinned = run_and_read_inputs(kaggle_api, tmp_path, "reader-pinned", [f"{DATASET}/1"])
    assert pinned == {"handoff-data/day.txt": "one"}
    latest = run_and_read_inputs(kaggle_api, tmp_path, "reader-late", [DATASET])
    assert latest == {"handoff-data/day.txt": "two"}


def test_kernel_output_is_mounted_with_its_marker(kaggle_api, tmp_path: Path) -> None:
    producer = kernel_folder(tmp_path, "producer", "open('ckpt.txt', 'w').write('state')\n")
    kaggle_api.kernels_push(str(producer))
    wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/producer")
    folder = kernel_folder(
        tmp_path, "consumer", LIST_INPUT, kernel_sources=[f"{EMULATOR_USER}/producer"]
    )
    kaggle_api.kernels_push(str(folder))
    wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/consumer")
    kaggle_api.kernels_output(f"{EMULATOR_USER}/consumer", str(tmp_path / "out"))
    inputs = json.loads((tmp_path / "out" / "inputs.json").read_text())

    assert inputs["producer/ckpt.txt"] == "state"
    assert json.loads(inputs["producer/__output__.json"]) == {
        "kernel": f"{EMULATOR_USER}/producer",
        "version": 1,
    }


def test_nested_layout_and_read_only_inputs(kaggle_api, tmp_path: Path, emulator) -> None:
    emulator.config.input_layout = "nested"
    create(kaggle_api, tmp_path, {"a.txt": "a"})
    wait_for_dataset(kaggle_api, DATASET)
    code = LIST_INPUT + (
        "import stat\n"
        "mode = os.stat(os.path.join(root, 'datasets', 'relay-tester', 'handoff-data', 'a.txt')).st_mode\n"
        "open('mode.txt', 'w').write(oct(mode & 0o777))\n"
    )
    folder = kernel_folder(tmp_path, "nested-reader", code, dataset_sources=[DATASET])
    kaggle_api.kernels_push(str(folder))
    wait_for_kernel(kaggle_api, f"{EMULATOR_USER}/nested-reader")
    kaggle_api.kernels_output(f"{EMULATOR_USER}/nested-reader", str(tmp_path / "out"))

    inputs = json.loads((tmp_path / "out" / "inputs.json").read_text())
    assert inputs == {f"datasets/{EMULATOR_USER}/handoff-data/a.txt": "a"}
    assert (tmp_path / "out" / "mode.txt").read_text() == "0o444"


def test_file_listing_comes_in_pages(kaggle_api, tmp_path: Path) -> None:
    create(kaggle_api, tmp_path, {f"f{i:02d}.txt": str(i) for i in range(7)})
    wait_for_dataset(kaggle_api, DATASET)
    first = kaggle_api.dataset_list_files(DATASET, page_size=3)
    second = kaggle_api.dataset_list_files(DATASET, page_token=first.next_page_token, page_size=3)
    third = kaggle_api.dataset_list_files(DATASET, page_token=second.next_page_token, page_size=3)

    names = [item.name for item in first.files + second.files + third.files]
    assert names == [f"f{i:02d}.txt" for i in range(7)]
    assert third.next_page_token == ""


def test_download_one_file_and_whole_version(kaggle_api, tmp_path: Path) -> None:
    create(kaggle_api, tmp_path, {"a.txt": "alpha", "b.txt": "beta"})
    wait_for_dataset(kaggle_api, DATASET)
    kaggle_api.dataset_download_file(DATASET, "b.txt", path=str(tmp_path / "one"))
    kaggle_api.dataset_download_files(DATASET, path=str(tmp_path / "all"))

    assert (tmp_path / "one" / "b.txt").read_text() == "beta"
    with zipfile.ZipFile(tmp_path / "all" / "handoff-data.zip") as bundle:
        assert sorted(bundle.namelist()) == ["a.txt", "b.txt"]


def test_metadata_round_trip(kaggle_api, tmp_path: Path) -> None:
    create(kaggle_api, tmp_path, {"a.txt": "a"}, subtitle="A subtitle of proper length")
    kaggle_api.dataset_metadata(DATASET, str(tmp_path / "meta"))

    info = json.loads((tmp_path / "meta" / "dataset-metadata.json").read_text())["info"]
    assert info["subtitle"] == "A subtitle of proper length"
    assert info["licenses"] == [{"name": "CC0-1.0"}]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"id": f"{EMULATOR_USER}/Bad Slug"}, "lower-case letters"),
        ({"licenses": [{"name": "made-up-license"}]}, "Unknown license"),
    ],
)
def test_dataset_rules_the_client_does_not_check(
    kaggle_api, tmp_path: Path, metadata, message
) -> None:
    folder = dataset_folder(tmp_path, "handoff-data", {"a.txt": "a"}, **metadata)
    answer = kaggle_api.dataset_create_new(str(folder), quiet=True)

    assert answer.status == "error"
    assert message in answer.error


def test_dataset_for_another_owner_is_forbidden(kaggle_api, tmp_path: Path) -> None:
    folder = dataset_folder(
        tmp_path, "handoff-data", {"a.txt": "a"}, id="someone-else/handoff-data"
    )

    with pytest.raises(HTTPError) as raised:
        kaggle_api.dataset_create_new(str(folder), quiet=True)
    assert raised.value.response.status_code == 403


def test_version_of_missing_dataset_is_not_found(kaggle_api, tmp_path: Path) -> None:
    with pytest.raises(HTTPError) as raised:
        new_version(kaggle_api, tmp_path, {"a.txt": "a"}, "no dataset yet")
    assert raised.value.response.status_code == 404
    with pytest.raises(HTTPError):
        kaggle_api.dataset_status(DATASET)


def test_taken_slug_is_reported_by_the_client(kaggle_api, tmp_path: Path) -> None:
    create(kaggle_api, tmp_path, {"a.txt": "a"})
    folder = dataset_folder(tmp_path, "handoff-data", {"a.txt": "a"})
    answer = kaggle_api.dataset_create_new(str(folder), quiet=True)

    assert answer.status == "error"
    assert "already in use" in answer.error
