"""Download the outputs of one kernel version, every page, with untrusted names checked.

The client's ``kernels_output`` joins each listed name onto the destination
itself and writes the run log as ``<slug>.log`` in the same folder, where an
output of that name would overwrite it or be overwritten. So the relay lists
the outputs through the RPC, checks every name before any byte is written,
and downloads each URL itself through a session of the kaggle client.

Layout of a harvest in ``dest``::

    dest/output/<name as listed>     every accepted output file
    dest/<slug>.log                  the run log, outside the outputs' namespace

A name is refused (and reported in ``Outputs.refused``, with a warning)
when it is absolute, has a drive letter, a backslash, a NUL byte, an empty,
``.`` or ``..`` part or a part above 255 bytes, or starts with the
atomic-write prefix. The other files are
downloaded. If ``relay-manifest.json`` names a file that did not arrive
(rejected, or missing from the listing), the harvest fails with
ManifestError, so a checkpoint cannot vanish silently.
"""

from __future__ import annotations

import contextvars
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kaggle_relay.errors import (
    KaggleAuthError,
    KaggleUnavailableError,
    ManifestError,
    UnsafeOutputPathError,
)
from kaggle_relay.relay import client, retry
from kaggle_relay.relay.fetch import fetch
from kaggle_relay.relay.refs import KernelRef
from kaggle_relay.runtime import atomic
from kaggle_relay.runtime.manifest import MANIFEST_NAME, load_manifest

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)

OUTPUT_FOLDER = "output"
PAGE_SIZE = 200
MAX_PAGES = 10_000
#: Files downloaded at once: enough to hide the per-file round trips, few enough for a home uplink.
PARALLEL_DOWNLOADS = 4
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class Outputs:
    """Result of a harvest: the output folder, its files, the run log, and the rejected names."""

    folder: Path
    files: list[Path]
    log_path: Path | None
    refused: list[UnsafeOutputPathError] = field(default_factory=list)


@dataclass(frozen=True)
class ListedFile:
    name: str
    url: str


def check_output_name(name: str) -> PurePosixPath:
    """Return ``name`` as a relative path that stays inside the output folder, or raise."""
    if not name:
        raise UnsafeOutputPathError(name, "the name is empty")
    if "\\" in name:
        raise UnsafeOutputPathError(name, "it contains a backslash")
    if _DRIVE.match(name):
        raise UnsafeOutputPathError(name, "it starts with a drive letter")
    if name.startswith("/"):
        raise UnsafeOutputPathError(name, "it is an absolute path")
    if "\x00" in name:
        raise UnsafeOutputPathError(name, "it contains a NUL byte")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeOutputPathError(name, "it has an empty, '.' or '..' part")
    if any(len(part.encode("utf-8", "surrogateescape")) > atomic.NAME_MAX for part in parts):
        raise UnsafeOutputPathError(name, f"it has a part longer than {atomic.NAME_MAX} bytes")
    if any(atomic.is_temporary(part) for part in parts):
        raise UnsafeOutputPathError(name, f"it starts with {atomic.TEMP_PREFIX!r}, reserved for unfinished writes")
    return PurePosixPath(*parts)


def download_outputs(
    api: KaggleApi,
    ref: KernelRef,
    dest: Path,
    *,
    file_pattern: str | None = None,
    progress: bool = False,
) -> Outputs:
    """Download the outputs of ``ref`` (which must carry its version) into ``dest``.

    ``file_pattern`` is a regular expression searched in each name, as the
    client's ``--file-pattern``; with it, the manifest check covers only the
    names it matches.
    """
    listing = open_outputs(api, ref, dest, file_pattern=file_pattern, progress=progress)
    listing.fetch(listing.names)
    return listing.finish()


def open_outputs(
    api: KaggleApi,
    ref: KernelRef,
    dest: Path,
    *,
    file_pattern: str | None = None,
    progress: bool = False,
) -> OutputSet:
    """List the outputs of ``ref``, check their names and return them, to download on demand.

    Files of an earlier download into ``dest`` that the listing lacks are removed.
    """
    ref.require_version()
    listed, run_log = list_outputs(api, ref)
    pattern = re.compile(file_pattern) if file_pattern else None
    wanted = [item for item in listed if pattern is None or pattern.search(item.name)]
    folder = dest / OUTPUT_FOLDER
    accepted, refused = _split_by_name(wanted)
    _remove_stale(folder, {str(path) for path, _ in accepted})
    return OutputSet(api, ref, dest, folder, {item.name: (path, item) for path, item in accepted}, refused, run_log, pattern, progress)


class OutputSet:
    """The accepted outputs of one version, downloaded into ``folder`` only when asked for."""

    def __init__(
        self, api: KaggleApi, ref: KernelRef, dest: Path, folder: Path,
        accepted: dict[str, tuple[PurePosixPath, ListedFile]], refused: list[UnsafeOutputPathError],
        run_log: str, pattern: re.Pattern[str] | None, progress: bool,
    ) -> None:
        self.api = api
        self.ref = ref
        self.dest = dest
        self.folder = folder
        self.accepted = accepted
        self.refused = refused
        self.run_log = run_log
        self.pattern = pattern
        self.progress = progress
        #: Listing names downloaded so far, in the order they were asked for.
        self.fetched: list[str] = []

    @property
    def names(self) -> list[str]:
        """The listing names that passed the name checks (and the file pattern)."""
        return list(self.accepted)

    def path_of(self, name: str) -> Path:
        """Return where the output ``name`` is (or will be) downloaded."""
        return self.folder.joinpath(*self.accepted[name][0].parts)

    def fetch(self, names: list[str]) -> list[Path]:
        """Download the outputs ``names`` not downloaded yet, several at once; return every path asked for."""
        missing = [name for name in dict.fromkeys(names) if name not in self.fetched]
        _download_all(self.api, self.ref, [self.accepted[name] for name in missing], self.folder, self.progress)
        self.fetched.extend(missing)
        return [self.path_of(name) for name in names]

    def finish(self) -> Outputs:
        """Write the run log and check that every file a manifest records is in the listing."""
        files = [self.path_of(name) for name in self.accepted if name in self.fetched]
        log_path = _write_log(self.dest, self.ref, self.run_log)
        outputs = Outputs(folder=self.folder, files=files, log_path=log_path, refused=self.refused)
        check_manifest_arrived(outputs, self.pattern, listed={self.path_of(name) for name in self.accepted})
        skipped = len(self.accepted) - len(files)
        log.info("downloaded %d output files of %s into %s%s", len(files), self.ref, self.folder,
                 f" ({skipped} not needed)" if skipped else "")
        return outputs


def list_outputs(api: KaggleApi, ref: KernelRef) -> tuple[list[ListedFile], str]:
    """List every page of the outputs of ``ref``; return the files and the run log."""
    files: list[ListedFile] = []
    run_log = ""
    token = ""
    seen_tokens: set[str] = set()
    for page in range(MAX_PAGES):
        response = retry.run(
            "read", "ListKernelSessionOutput", _list_page, api, ref, token, resource=str(ref)
        )
        if page == 0:
            run_log = response.log or ""
        files.extend(ListedFile(item.file_name or "", item.url or "") for item in response.files or [])
        token = response.next_page_token or ""
        if not token:
            return files, run_log
        if token in seen_tokens:
            raise KaggleUnavailableError(
                f"ListKernelSessionOutput for {ref} returned page token {token!r} twice",
                call="ListKernelSessionOutput",
                resource=str(ref),
            )
        seen_tokens.add(token)
    raise KaggleUnavailableError(
        f"ListKernelSessionOutput for {ref} returned more than {MAX_PAGES} pages",
        call="ListKernelSessionOutput",
        resource=str(ref),
    )


def _list_page(api: KaggleApi, ref: KernelRef, token: str) -> Any:
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    request = ApiListKernelSessionOutputRequest()
    request.user_name = ref.owner
    request.kernel_slug = ref.slug
    request.version_label = f"v{ref.require_version()}"
    request.page_size = PAGE_SIZE
    request.page_token = token
    with api.build_kaggle_client() as kaggle:
        return kaggle.kernels.kernels_api_client.list_kernel_session_output(request)


def _split_by_name(
    listed: list[ListedFile],
) -> tuple[list[tuple[PurePosixPath, ListedFile]], list[UnsafeOutputPathError]]:
    accepted: dict[PurePosixPath, ListedFile] = {}
    refused: list[UnsafeOutputPathError] = []
    for item in listed:
        try:
            path = check_output_name(item.name)
            if path in accepted:
                raise UnsafeOutputPathError(item.name, "the listing names it twice")
        except UnsafeOutputPathError as unsafe:
            refused.append(unsafe)
            continue
        accepted[path] = item
    folders = {parent for path in accepted for parent in path.parents}
    for path in [path for path in accepted if path in folders]:
        refused.append(UnsafeOutputPathError(accepted.pop(path).name, "it is both a file and a folder in the listing"))
    for error in refused:
        log.warning("%s", error)
    return list(accepted.items()), refused


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Remove files of an earlier harvest into the same folder that this listing lacks."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), reverse=True):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in keep:
            log.warning("removing %s: not in this version's output listing", path)
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _download_all(
    api: KaggleApi, ref: KernelRef, accepted: list[tuple[PurePosixPath, ListedFile]], folder: Path, progress: bool
) -> list[Path]:
    """Download the accepted files, ``PARALLEL_DOWNLOADS`` at a time; return their paths in listing order."""
    if not accepted:
        return []
    with _progress_bar(progress) as bar, ThreadPoolExecutor(
        max_workers=min(PARALLEL_DOWNLOADS, len(accepted)), thread_name_prefix="relay-download"
    ) as pool:
        # Worker threads start with an empty context, so each task runs in a copy of this one.
        # A chain's retry policy (``retry.policy_scope``) then applies to its downloads too.
        futures = [
            pool.submit(contextvars.copy_context().run, _download, api, ref, item, folder, path, bar)
            for path, item in accepted
        ]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _download(
    api: KaggleApi, ref: KernelRef, item: ListedFile, folder: Path, relative: PurePosixPath, bar: _Bar
) -> Path:
    target = folder.joinpath(*relative.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A symlinked folder inside dest could still lead outside it; check the real path.
    if not target.parent.resolve().is_relative_to(folder.resolve()):
        raise UnsafeOutputPathError(item.name, f"its folder resolves outside {folder}")
    resource = f"{ref}:{item.name}"
    try:
        retry.run("read", "download output", _fetch, api, item, target, bar, resource=resource)
    except KaggleAuthError:
        # Output URLs are signed and expire (HTTP 403); list again for a fresh one, once.
        log.warning("the download URL of %s was rejected (HTTP 403); listing the outputs again for a fresh URL", resource)
        fresh = {listed.name: listed for listed in list_outputs(api, ref)[0]}.get(item.name, item)
        retry.run("read", "download output", _fetch, api, fresh, target, bar, resource=resource)
    return target


def _fetch(api: KaggleApi, item: ListedFile, target: Path, bar: _Bar) -> None:
    task = bar.start(item.name)
    fetch(client.http_session(api), item.url, target, name=item.name, advance=lambda size: bar.advance(task, size))


class _Bar:
    """Byte progress of several downloads at once; the base class shows nothing."""

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self, name: str) -> Any:
        return None

    def advance(self, task: Any, size: int) -> None:
        return None


class _RichBar(_Bar):
    """One rich progress line per file on stderr, with bytes and speed."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        self.progress = Progress(
            *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=Console(stderr=True)
        )

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, name: str) -> Any:
        return self.progress.add_task(name, total=None)

    def advance(self, task: Any, size: int) -> None:
        self.progress.advance(task, size)


def _progress_bar(enabled: bool) -> _Bar:
    return _RichBar() if enabled else _Bar()


def _write_log(dest: Path, ref: KernelRef, run_log: str) -> Path | None:
    if not run_log:
        return None
    path = dest / f"{ref.slug}.log"
    atomic.write_text(path, run_log)
    return path


def check_manifest_arrived(
    outputs: Outputs, pattern: re.Pattern[str] | None = None, *, listed: set[Path] | None = None
) -> None:
    """Raise ManifestError when a manifest among the outputs names a file that did not arrive.

    With ``listed`` (the paths of every accepted output, downloaded or not), a
    file counts as arrived when it is among them.
    """
    arrived = {path.resolve() for path in (listed if listed is not None else outputs.files)}
    for manifest_path in outputs.files:
        if manifest_path.name != MANIFEST_NAME:
            continue
        manifest = load_manifest(manifest_path.parent)
        if manifest is None:
            continue
        missing = [
            entry.file
            for entry in manifest.files
            if (manifest_path.parent / entry.file).resolve() not in arrived
            and (pattern is None or pattern.search(_output_name(outputs, manifest_path.parent / entry.file)))
        ]
        if missing:
            refused = ", ".join(repr(error.name) for error in outputs.refused) or "none"
            raise ManifestError(
                str(manifest_path),
                f"lists {len(missing)} file(s) that did not arrive: {', '.join(missing)} "
                f"(refused names: {refused})",
            )


def _output_name(outputs: Outputs, path: Path) -> str:
    try:
        return path.resolve().relative_to(outputs.folder.resolve()).as_posix()
    except ValueError:
        return path.name
