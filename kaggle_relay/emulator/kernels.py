"""The kernels service: SaveKernel, GetKernelSessionStatus, ListKernelSessionOutput, GetKernel.

A push (SaveKernel) creates version N+1 of ``owner/slug`` and starts it at
once. While a version of the same kernel is still QUEUED or RUNNING, the
push is rejected with an ``error`` in the response and no version is made. A new kernel whose title does not slug to the requested id is
created under the title's slug, as Kaggle does (the response's ``ref``
shows it). Dataset and kernel sources that do not exist are returned in
``invalidDatasetSources`` / ``invalidKernelSources`` and left out of the
run, as on Kaggle.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_relay.emulator import rules
from kaggle_relay.emulator.config import KAGGLE_SESSION_LIMIT
from kaggle_relay.emulator.protocol import (
    KERNEL_END_STATUSES,
    ApiError,
    iso_time,
    now,
    page,
    parse_version_label,
    split_ref,
)

if TYPE_CHECKING:
    from kaggle_relay.emulator.server import Emulator

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("QUEUED", "RUNNING")


def busy_message(ref: str, number: int, status: str) -> str:
    """The SaveKernel error for a push while another version of the kernel is active."""
    # NOTE: Kaggle's exact wording for this rejection is not known; the text is ours.
    return (
        f"Kernel {ref} already has version {number} {status.lower()}. Wait until it finishes "
        "before pushing a new version."
    )


class Kernels:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.store = emulator.store

    # --- RPCs ---------------------------------------------------------------

    def save_kernel(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        owner, slug = self._push_target(user, body)
        settings, invalid = self._push_settings(body)
        with self.store.change():
            kernel = self._kernel_for_push(owner, slug, body)
            ref = f"{kernel['owner']}/{kernel['slug']}"
            active = self._active_version(kernel)
            if active is not None:
                return {"error": busy_message(ref, active["number"], active["status"])}
            quick_save = body.get("kernelExecutionType") == "QUICK_SAVE"
            version = self._new_version(kernel, settings, quick_save)
        if not quick_save:
            self.emulator.runner.start(ref, version["number"], settings["limit"])
        answer: dict[str, Any] = {
            "ref": f"/code/{ref}",
            "url": f"{self.emulator.url}/code/{ref}",
            "versionNumber": version["number"],
            "kernelId": kernel["id"],
        }
        answer.update({key: value for key, value in invalid.items() if value})
        return answer

    def get_kernel_session_status(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        version = self._requested_version(user, body)
        answer = {"status": version["status"]}
        if version.get("failure_message"):
            answer["failureMessage"] = version["failure_message"]
        return answer

    def list_kernel_session_output(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        version = self._requested_version(user, body)
        ref = f"{body['userName']}/{body['kernelSlug']}"
        files = [
            {
                "url": self.emulator.files.url("k", ref, version["number"], index, entry["name"]),
                "fileName": entry["name"],
            }
            for index, entry in enumerate(version.get("outputs", []))
        ]
        chunk, token = page(files, body, self.emulator.config.output_page_cap)
        answer: dict[str, Any] = {"files": chunk}
        log_text = self.log_text(ref, version)
        if log_text:
            answer["log"] = log_text
        if token:
            answer["nextPageToken"] = token
        return answer

    def get_kernel(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        version = self._requested_version(user, body)
        kernel = self._kernel(f"{body['userName']}/{body['kernelSlug']}")
        settings = version["settings"]
        metadata = {
            "id": kernel["id"],
            "ref": f"{kernel['owner']}/{kernel['slug']}",
            "title": kernel["title"],
            "author": kernel["owner"],
            "slug": kernel["slug"],
            "language": version["language"],
            "kernelType": version["kernel_type"],
            "isPrivate": settings["is_private"],
            "enableGpu": settings["enable_gpu"],
            "enableTpu": settings["enable_tpu"],
            "enableInternet": settings["enable_internet"],
            "datasetDataSources": version["dataset_sources"],
            "kernelDataSources": version["kernel_sources"],
            "competitionDataSources": [],
            "modelDataSources": [],
            "categoryIds": settings["category_ids"],
            "currentVersionNumber": len(kernel["versions"]),
            "machineShape": settings["machine_shape"],
        }
        if version.get("started"):
            metadata["lastRunTime"] = iso_time(version["started"])
        blob = {
            "source": version["text"],
            "language": version["language"],
            "kernelType": version["kernel_type"],
            "slug": kernel["slug"],
        }
        return {"metadata": metadata, "blob": blob}

    # --- push helpers -------------------------------------------------------

    def _push_target(self, user: str, body: dict[str, Any]) -> tuple[str, str]:
        if body.get("id"):
            kernel = self._kernel_by_id(int(body["id"]))
            return kernel["owner"], kernel["slug"]
        owner, slug, version = split_ref(body.get("slug") or "", "kernel")
        if version is not None:
            raise ApiError(400, "The kernel id cannot contain a version")
        rules.check_owner(owner, user, "kernel")
        problem = rules.kernel_slug_error(slug)
        if problem:
            raise ApiError(400, problem)
        return owner, slug

    def _push_settings(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
        language = body.get("language")
        kernel_type = body.get("kernelType")
        if language not in ("python", "r", "rmarkdown"):
            raise ApiError(400, f"Invalid language {language!r}; use python, r or rmarkdown")
        if kernel_type not in ("script", "notebook"):
            raise ApiError(400, f"Invalid kernel type {kernel_type!r}; use script or notebook")
        if language != "python":
            raise ApiError(400, f"The emulator runs only Python kernels, not {language!r}")
        if not body.get("text"):
            raise ApiError(400, "The kernel source text is empty")
        if body.get("enableGpu") and body.get("enableTpu"):
            raise ApiError(400, "A kernel cannot enable both a GPU and a TPU")
        settings = {
            "language": language,
            "kernel_type": kernel_type,
            "text": body["text"],
            "is_private": bool(body.get("isPrivate", True)),
            "enable_gpu": bool(body.get("enableGpu", False)),
            "enable_tpu": bool(body.get("enableTpu", False)),
            "enable_internet": bool(body.get("enableInternet", False)),
            "category_ids": list(body.get("categoryIds", [])),
            "machine_shape": rules.machine_shape(body.get("machineShape")),
            "docker_image": body.get("dockerImage"),
            "limit": self._session_limit(body),
        }
        invalid = {
            "invalidDatasetSources": [],
            "invalidKernelSources": [],
            "invalidCompetitionSources": list(body.get("competitionDataSources", [])),
            "invalidModelSources": list(body.get("modelDataSources", [])),
        }
        settings["dataset_sources"] = self._valid_sources(
            body.get("datasetDataSources", []),
            self.emulator.datasets.exists,
            invalid["invalidDatasetSources"],
        )
        settings["kernel_sources"] = self._valid_sources(
            body.get("kernelDataSources", []), self.exists, invalid["invalidKernelSources"]
        )
        return settings, invalid

    @staticmethod
    def _valid_sources(sources: list[str], exists: Any, invalid: list[str]) -> list[str]:
        valid: list[str] = []
        for source in sources:
            (valid if exists(source) else invalid).append(source)
        return valid

    def _session_limit(self, body: dict[str, Any]) -> float:
        limit = self.emulator.config.session_limit
        requested = body.get("sessionTimeoutSeconds")
        if requested is None:
            return limit
        requested = int(requested)
        if not 0 < requested <= KAGGLE_SESSION_LIMIT:
            raise ApiError(
                400,
                f"Invalid sessionTimeoutSeconds {requested}: it must be between 1 and "
                f"{KAGGLE_SESSION_LIMIT:g}",
            )
        return min(limit, float(requested))

    def _kernel_for_push(self, owner: str, slug: str, body: dict[str, Any]) -> dict[str, Any]:
        title = body.get("newTitle")
        existing = self.store.kernels.get(f"{owner}/{slug}")
        if existing is not None:
            if title:
                existing["title"] = title
            return existing
        if title and len(title) < 5:
            raise ApiError(400, f"The kernel title {title!r} must be at least five characters")
        if title and rules.slugify_title(title) != slug:
            # Kaggle names a new kernel after its title, whatever id was requested.
            slug = rules.slugify_title(title)
            existing = self.store.kernels.get(f"{owner}/{slug}")
            if existing is not None:
                return existing
        kernel: dict[str, Any] = {
            "id": self.store.new_id(),
            "owner": owner,
            "slug": slug,
            "title": title or slug,
            "versions": [],
        }
        self.store.kernels[f"{owner}/{slug}"] = kernel
        return kernel

    @staticmethod
    def _active_version(kernel: dict[str, Any]) -> dict[str, Any] | None:
        for version in kernel["versions"]:
            if version["status"] in ACTIVE_STATUSES:
                return version
        return None

    @staticmethod
    def _new_version(
        kernel: dict[str, Any], settings: dict[str, Any], quick_save: bool
    ) -> dict[str, Any]:
        # A quick save stores the source without running it, so it has no session and no output.
        version = {
            "number": len(kernel["versions"]) + 1,
            "status": "QUEUED",
            "failure_message": "",
            "created": now(),
            "language": settings["language"],
            "kernel_type": settings["kernel_type"],
            "text": settings["text"],
            "dataset_sources": settings["dataset_sources"],
            "kernel_sources": settings["kernel_sources"],
            "settings": {k: v for k, v in settings.items() if k not in ("text",)},
            "outputs": [],
        }
        if quick_save:
            version["status"] = "COMPLETE"
        kernel["versions"].append(version)
        return version

    # --- lookups ------------------------------------------------------------

    def _kernel(self, ref: str) -> dict[str, Any]:
        kernel = self.store.kernels.get(ref)
        if kernel is None:
            raise ApiError(404, f"Notebook {ref} not found")
        return kernel

    def _kernel_by_id(self, kernel_id: int) -> dict[str, Any]:
        for kernel in self.store.kernels.values():
            if kernel["id"] == kernel_id:
                return kernel
        raise ApiError(404, f"Notebook with id {kernel_id} not found")

    def _requested_version(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        ref = f"{body.get('userName', '')}/{body.get('kernelSlug', '')}"
        number = parse_version_label(body.get("versionLabel"))
        with self.store.lock:
            kernel = self._kernel(ref)
            if kernel["owner"] != user:
                raise ApiError(403, f"Permission 'kernels.get' was denied for {ref}")
            if not kernel["versions"]:
                raise ApiError(404, f"Notebook {ref} has no version")
            if number is None:
                return dict(kernel["versions"][-1])
            if not 1 <= number <= len(kernel["versions"]):
                raise ApiError(404, f"Version {number} of notebook {ref} not found")
            return dict(kernel["versions"][number - 1])

    def version(self, ref: str, number: int) -> dict[str, Any]:
        with self.store.lock:
            return dict(self._kernel(ref)["versions"][number - 1])

    def update_version(self, ref: str, number: int, **fields: Any) -> None:
        with self.store.change():
            self._kernel(ref)["versions"][number - 1].update(fields)

    def exists(self, source: str) -> bool:
        return self.resolve_output(source, finished_only=False) is not None

    def resolve_output(
        self, source: str, *, finished_only: bool = True
    ) -> tuple[str, int, list[dict[str, Any]]] | None:
        """Find the kernel version a source names: (ref, version, output entries)."""
        try:
            owner, slug, number = split_ref(source, "kernel")
        except ApiError:
            return None
        ref = f"{owner}/{slug}"
        with self.store.lock:
            kernel = self.store.kernels.get(ref)
            if kernel is None or not kernel["versions"]:
                return None
            versions = kernel["versions"]
            if number is not None:
                candidates = versions[number - 1 : number] if 1 <= number <= len(versions) else []
            else:
                candidates = list(reversed(versions))
            for version in candidates:
                if not finished_only or version["status"] in KERNEL_END_STATUSES:
                    return ref, version["number"], list(version.get("outputs", []))
        return None

    def log_text(self, ref: str, version: dict[str, Any]) -> str:
        live = self.emulator.runner.live_log(ref, version["number"])
        if live is not None:
            return live
        path = version.get("log_path")
        if not path:
            return ""
        return self.store.resolve(path).read_text(encoding="utf-8")

    def add_output(self, ref: str, number: int, name: str, data: bytes) -> None:
        """Add an output entry with any name (even ``../escape.txt``) to a version's listing."""
        path = self._extra_path(ref, number)
        path.write_bytes(data)
        self._list_output(ref, number, name, path)

    def add_output_file(self, ref: str, number: int, name: str, source: Path) -> None:
        """Like ``add_output``, taking the bytes from ``source`` by hard link (copy across file systems).

        Large outputs (benchmarks move gigabytes) never pass through memory.
        """
        path = self._extra_path(ref, number)
        try:
            os.link(source, path)
        except OSError:
            shutil.copyfile(source, path)
        self._list_output(ref, number, name, path)

    def _extra_path(self, ref: str, number: int) -> Path:
        folder = self.store.data_dir / "extra-outputs" / ref / f"v{number}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"entry-{self.store.new_id()}"

    def _list_output(self, ref: str, number: int, name: str, path: Path) -> None:
        entry = {"name": name, "path": self.store.relative(path), "size": path.stat().st_size, "mtime": now()}
        with self.store.change():
            version = self._kernel(ref)["versions"][number - 1]
            version.setdefault("outputs", []).append(entry)

    def recover(self) -> None:
        """End versions that a previous server left QUEUED or RUNNING: their process is gone."""
        with self.store.change():
            for kernel in self.store.kernels.values():
                for version in kernel["versions"]:
                    if version["status"] in ACTIVE_STATUSES:
                        version["status"] = "ERROR"
                        version["failure_message"] = (
                            "the emulator restarted while this version was running"
                        )
                        version["ended"] = now()
