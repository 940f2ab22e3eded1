"""The datasets service: create, version, status, listing, metadata and download.

Each version is a full snapshot of the files uploaded with it: nothing is
carried over from the previous version. An uploaded ``.zip`` or ``.tar``
(what the client sends for a sub-folder in ``dir_mode`` zip or tar) is
extracted into a folder named after the archive, so
``checkpoints.zip`` holding ``step_100/model.pt`` is listed as
``checkpoints/step_100/model.pt``. In the client's default ``dir_mode``
("skip") the client uploads nothing for a sub-folder, so it is simply
missing from the version.

A new version is processing (BLOBS_RECEIVED, then BLOBS_DECOMPRESSED, then
BLOBS_COPIED_TO_SDS) for the server's processing delay, then READY, or
FAILED when a ``version-failed`` fault was consumed by its creation.
Creating a version while the latest one is still processing gets
HTTP 403. GetDatasetStatus reports the latest version, and GetDataset's
``currentVersionNumber`` is the number of the latest version, processing or
not; its ``versions`` list carries each version's notes and status.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kaggle_relay.emulator import rules
from kaggle_relay.emulator.protocol import ApiError, iso_time, now, page, split_ref

if TYPE_CHECKING:
    from kaggle_relay.emulator.server import Emulator

log = logging.getLogger(__name__)

PROCESSING_STATES = ("BLOBS_RECEIVED", "BLOBS_DECOMPRESSED", "BLOBS_COPIED_TO_SDS")


def version_status(version: dict[str, Any], delay: float) -> str:
    """The DatabundleVersionStatus name of a version at this moment."""
    elapsed = now() - version["created"]
    if elapsed >= version["ready_after"]:
        return "FAILED" if version["failed"] else "READY"
    if delay <= 0:
        return PROCESSING_STATES[0]
    step = int(elapsed / version["ready_after"] * len(PROCESSING_STATES))
    return PROCESSING_STATES[min(step, len(PROCESSING_STATES) - 1)]


class Datasets:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.store = emulator.store

    # --- RPCs ---------------------------------------------------------------

    def create_dataset(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        owner = body.get("ownerSlug") or user
        slug = body.get("slug") or ""
        rules.check_owner(owner, user, "dataset")
        problem = (
            rules.dataset_slug_error(slug)
            or rules.dataset_title_error(body.get("title"))
            or rules.subtitle_error(body.get("subtitle"))
            or rules.license_error(body.get("licenseName"))
        )
        if problem:
            return {"status": "error", "error": problem}
        ref = f"{owner}/{slug}"
        with self.store.change():
            if ref in self.store.datasets:
                return {
                    "status": "error",
                    "error": f'The requested slug "{slug}" is already in use by a dataset.',
                }
            files = self._take_files(body.get("files", []), ref, 1)
            fails = self.emulator.faults.take("CreateDataset", version_failed=True) is not None
            self.store.datasets[ref] = {
                "id": self.store.new_id(),
                "owner": owner,
                "slug": slug,
                "title": body.get("title"),
                "subtitle": body.get("subtitle") or "",
                "description": body.get("description") or "",
                "license": body.get("licenseName"),
                "is_private": bool(body.get("isPrivate", False)),
                "keywords": list(body.get("categoryIds", [])),
                "versions": [self._new_version(1, "Initial release", files, fails)],
            }
        return {"ref": ref, "url": f"{self.emulator.url}/datasets/{ref}", "status": "ok"}

    def create_dataset_version(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        return self._create_version(user, ref, body.get("body") or {}, "CreateDatasetVersion")

    def create_dataset_version_by_id(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        dataset = self._dataset_by_id(int(body.get("id", 0)))
        ref = f"{dataset['owner']}/{dataset['slug']}"
        return self._create_version(user, ref, body.get("body") or {}, "CreateDatasetVersionById")

    def get_dataset_status(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        dataset = self._readable(user, body)
        return {"status": self._status(dataset["versions"][-1])}

    def get_dataset(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        dataset = self._readable(user, body)
        ref = f"{dataset['owner']}/{dataset['slug']}"
        latest = dataset["versions"][-1]
        current_files = self._files_for(dataset, None)
        return {
            "id": dataset["id"],
            "ref": ref,
            "title": dataset["title"],
            "subtitle": dataset["subtitle"],
            "description": dataset["description"],
            "url": f"{self.emulator.url}/datasets/{ref}",
            "ownerName": dataset["owner"],
            "ownerRef": dataset["owner"],
            "creatorName": dataset["owner"],
            "isPrivate": dataset["is_private"],
            "licenseName": dataset["license"],
            "lastUpdated": iso_time(latest["created"]),
            "currentVersionNumber": latest["number"],
            "totalBytes": sum(entry["size"] for entry in current_files),
            "files": [self._file_answer(ref, None, entry) for entry in current_files],
            "versions": [self._version_answer(dataset, version) for version in dataset["versions"]],
        }

    def list_dataset_files(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        dataset = self._readable(user, body)
        ref = f"{dataset['owner']}/{dataset['slug']}"
        number = body.get("datasetVersionNumber")
        files = self._files_for(dataset, int(number) if number else None)
        answers = [self._file_answer(ref, number, entry) for entry in files]
        chunk, token = page(answers, body, self.emulator.config.file_page_cap)
        answer: dict[str, Any] = {"datasetFiles": chunk}
        if token:
            answer["nextPageToken"] = token
        return answer

    def get_dataset_metadata(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        dataset = self._readable(user, body)
        info = {
            "datasetId": dataset["id"],
            "datasetSlug": dataset["slug"],
            "ownerUser": dataset["owner"],
            "title": dataset["title"],
            "subtitle": dataset["subtitle"],
            "description": dataset["description"],
            "isPrivate": dataset["is_private"],
            "keywords": dataset["keywords"],
            "licenses": [{"name": dataset["license"]}],
        }
        return {"info": info}

    def download_dataset(self, user: str, body: dict[str, Any]) -> str:
        """Return the URL that DownloadDataset redirects to (one file, or the version as a zip)."""
        dataset = self._readable(user, body)
        ref = f"{dataset['owner']}/{dataset['slug']}"
        number = self._version_number(dataset, body.get("datasetVersionNumber"))
        files = self._files_for(dataset, number)
        name = body.get("fileName")
        if not name:
            return self.emulator.files.url("z", ref, number, 0, f"{dataset['slug']}.zip")
        for index, entry in enumerate(files):
            if entry["name"] == name:
                return self.emulator.files.url("d", ref, number, index, name)
        raise ApiError(404, f"File {name!r} not found in dataset {ref} version {number}")

    # --- helpers used by kernels, mounts and downloads -----------------------

    def exists(self, source: str) -> bool:
        """Tell whether a dataset source names an existing dataset (and version, if pinned)."""
        try:
            owner, slug, number = split_ref(source, "dataset")
        except ApiError:
            return False
        with self.store.lock:
            dataset = self.store.datasets.get(f"{owner}/{slug}")
            if dataset is None:
                return False
            return number is None or 1 <= number <= len(dataset["versions"])

    def resolve_ready(self, source: str) -> tuple[str, int, list[dict[str, Any]]] | None:
        """Return (ref, version, files) for a source: its pinned version or the latest READY one."""
        try:
            owner, slug, number = split_ref(source, "dataset")
        except ApiError:
            return None
        ref = f"{owner}/{slug}"
        with self.store.lock:
            dataset = self.store.datasets.get(ref)
            if dataset is None:
                return None
            versions = dataset["versions"]
            if number is not None:
                candidates = versions[number - 1 : number] if 1 <= number <= len(versions) else []
            else:
                candidates = list(reversed(versions))
            for version in candidates:
                if self._status(version) == "READY":
                    return ref, version["number"], list(version["files"])
        return None

    def files_of(self, ref: str, number: int) -> list[dict[str, Any]]:
        with self.store.lock:
            dataset = self.store.datasets.get(ref)
            if dataset is None or not 1 <= number <= len(dataset["versions"]):
                raise ApiError(404, f"dataset {ref} version {number} not found")
            return list(dataset["versions"][number - 1]["files"])

    # --- internals ----------------------------------------------------------

    def _create_version(
        self, user: str, ref: str, body: dict[str, Any], route: str
    ) -> dict[str, Any]:
        owner = ref.split("/")[0]
        with self.store.lock:
            dataset = self.store.datasets.get(ref)
            if dataset is None:
                raise ApiError(404, f"Dataset {ref} not found")
        rules.check_owner(owner, user, "dataset")
        problem = rules.subtitle_error(body.get("subtitle"))
        if problem:
            return {"status": "error", "error": problem}
        with self.store.change():
            latest = dataset["versions"][-1]
            status = self._status(latest)
            if status in PROCESSING_STATES:
                raise ApiError(
                    403,
                    f"Dataset {ref} version {latest['number']} is still being processed "
                    f"({status}); wait until it is ready before creating a new version",
                )
            number = len(dataset["versions"]) + 1
            files = self._take_files(body.get("files", []), ref, number)
            fails = self.emulator.faults.take(route, version_failed=True) is not None
            dataset["versions"].append(
                self._new_version(number, body.get("versionNotes") or "", files, fails)
            )
            for key in ("subtitle", "description"):
                if body.get(key):
                    dataset[key] = body[key]
        return {"ref": ref, "url": f"{self.emulator.url}/datasets/{ref}", "status": "ok"}

    def _new_version(
        self, number: int, notes: str, files: list[dict[str, Any]], fails: bool
    ) -> dict[str, Any]:
        return {
            "number": number,
            "notes": notes,
            "created": now(),
            "ready_after": self.emulator.config.processing_delay,
            "failed": fails,
            "files": files,
        }

    def _take_files(
        self, new_files: list[dict[str, Any]], ref: str, number: int
    ) -> list[dict[str, Any]]:
        if not new_files:
            raise ApiError(400, "A dataset version needs at least one file")
        folder = self.store.data_dir / "datasets" / ref / f"v{number}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for new_file in new_files:
            name, blob = self.emulator.uploads.claim(new_file.get("token") or "")
            self._place(name, blob, folder)
        entries = []
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                entries.append(
                    {
                        "name": path.relative_to(folder).as_posix(),
                        "path": self.store.relative(path),
                        "size": path.stat().st_size,
                        "mtime": path.stat().st_mtime,
                    }
                )
        return entries

    @staticmethod
    def _place(name: str, blob: Path, folder: Path) -> None:
        lower = name.lower()
        if lower.endswith((".zip", ".tar")):
            target = folder / name[: -len(".zip")]
            if target.exists():
                raise ApiError(400, f"Two uploaded files would both be named {target.name!r}")
            _extract(blob, target, zip_file=lower.endswith(".zip"))
            blob.unlink()
            return
        target = folder / name
        if target.exists():
            raise ApiError(400, f"Two uploaded files are both named {name!r}")
        shutil.move(str(blob), target)

    def _status(self, version: dict[str, Any]) -> str:
        return version_status(version, self.emulator.config.processing_delay)

    def _dataset_by_id(self, dataset_id: int) -> dict[str, Any]:
        with self.store.lock:
            for dataset in self.store.datasets.values():
                if dataset["id"] == dataset_id:
                    return dataset
        raise ApiError(404, f"Dataset with id {dataset_id} not found")

    def _readable(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        with self.store.lock:
            dataset = self.store.datasets.get(ref)
        if dataset is None:
            raise ApiError(404, f"Dataset {ref} not found")
        if dataset["is_private"] and dataset["owner"] != user:
            raise ApiError(403, f"Permission 'datasets.get' was denied for {ref}")
        return dataset

    def _version_number(self, dataset: dict[str, Any], requested: Any) -> int:
        if requested:
            number = int(requested)
            if not 1 <= number <= len(dataset["versions"]):
                raise ApiError(
                    404, f"Dataset {dataset['owner']}/{dataset['slug']} has no version {number}"
                )
            return number
        for version in reversed(dataset["versions"]):
            if self._status(version) == "READY":
                return int(version["number"])
        raise ApiError(404, f"Dataset {dataset['owner']}/{dataset['slug']} has no READY version")

    def _files_for(self, dataset: dict[str, Any], number: int | None) -> list[dict[str, Any]]:
        if number is None:
            ready = [v for v in dataset["versions"] if self._status(v) == "READY"]
            return list(ready[-1]["files"]) if ready else []
        return list(dataset["versions"][self._version_number(dataset, number) - 1]["files"])

    def _version_answer(self, dataset: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
        return {
            "versionNumber": version["number"],
            "creationDate": iso_time(version["created"]),
            "creatorName": dataset["owner"],
            "creatorRef": dataset["owner"],
            "versionNotes": version["notes"],
            "status": self._status(version),
        }

    def _file_answer(self, ref: str, number: Any, entry: dict[str, Any]) -> dict[str, Any]:
        suffix = PurePosixPath(entry["name"]).suffix.lstrip(".")
        return {
            "ref": f"{ref}/{entry['name']}",
            "datasetRef": ref,
            "ownerRef": ref.split("/")[0],
            "name": entry["name"],
            "creationDate": iso_time(entry["mtime"]),
            "fileType": f".{suffix}" if suffix else "",
            "totalBytes": entry["size"],
        }


def _extract(archive: Path, target: Path, *, zip_file: bool) -> None:
    """Extract an uploaded archive into ``target``, rejecting members that leave it."""
    target.mkdir(parents=True)
    root = target.resolve()
    if zip_file:
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                _check_member(root, name, archive)
            bundle.extractall(target)
        return
    with tarfile.open(archive) as bundle:
        for member in bundle.getmembers():
            _check_member(root, member.name, archive)
        bundle.extractall(target, filter="data")


def _check_member(root: Path, name: str, archive: Path) -> None:
    resolved = (root / name).resolve()
    if resolved != root and root not in resolved.parents:
        raise ApiError(400, f"Archive {archive.name} has a member outside its folder: {name!r}")
