"""Check at session start that the mounted handoff dataset is the version the relay attached.

The relay sets ``KAGGLE_RELAY_HANDOFF`` to ``{"dataset": "owner/slug",
"version": N, "run_id": "..."}`` and publishes a manifest whose ``handoff``
field carries the same identity. Kaggle mounts inputs at several paths
(``input/<slug>``, ``input/d/<owner>/<slug>``, ``input/datasets/<owner>/<slug>``),
and two attached datasets can share a slug, so the folder is found by
matching the manifest's identity, never by the mount path.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kaggle_relay.errors import ConfigError, HandoffMismatchError
from kaggle_relay.runtime import discover
from kaggle_relay.runtime.manifest import MANIFEST_NAME, load_manifest
from kaggle_relay.runtime.trust import WORKING

log = logging.getLogger(__name__)

HANDOFF_ENV = "KAGGLE_RELAY_HANDOFF"
IDENTITY_FIELDS = ("dataset", "version", "run_id")


def expected_handoff(expected: Mapping[str, Any] | str | None = None) -> dict[str, Any] | None:
    """Return the expected identity from the argument or ``KAGGLE_RELAY_HANDOFF``; None when neither is set."""
    raw: Any = expected if expected is not None else os.environ.get(HANDOFF_ENV, "").strip()
    if not raw:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{HANDOFF_ENV} is not valid JSON: {exc}", field=HANDOFF_ENV) from exc
    missing = [name for name in IDENTITY_FIELDS if name not in raw]
    if missing:
        raise ConfigError(
            f"the expected handoff {raw!r} lacks {', '.join(missing)}", field=HANDOFF_ENV
        )
    return {name: raw[name] for name in IDENTITY_FIELDS}


def _identity(handoff: Any) -> dict[str, Any] | None:
    if not isinstance(handoff, Mapping):
        return None
    return {name: handoff.get(name) for name in IDENTITY_FIELDS}


def _same(found: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    try:
        same_version = int(found["version"]) == int(expected["version"])
    except (TypeError, ValueError):
        return False
    return (
        same_version
        and found["dataset"] == expected["dataset"]
        and str(found["run_id"]) == str(expected["run_id"])
    )


def verify_handoff(
    expected: Mapping[str, Any] | str | None = None, root: str | os.PathLike[str] | None = None
) -> Path | None:
    """Return the input folder whose manifest carries the expected handoff identity.

    Returns None when no handoff is expected (no argument and no
    ``KAGGLE_RELAY_HANDOFF``). Raises HandoffMismatchError listing every
    manifest found under the input folder and its identity.
    """
    identity = expected_handoff(expected)
    if identity is None:
        return None
    inputs = [location for location in discover.list_locations(root) if location.source != WORKING]
    seen: list[str] = []
    for location, path in discover.iter_candidates(inputs, [MANIFEST_NAME]):
        try:
            manifest = load_manifest(os.path.dirname(path))
        except ValueError as exc:
            # The handoff's own manifest may be the damaged one, so the error must show it.
            seen.append(f"{path} ({location.source} {location.dataset or '?'}): unreadable ({exc})")
            continue
        if manifest is None:
            continue
        found = _identity(manifest.handoff)
        if found is not None and _same(found, identity):
            log.info(
                "handoff %s version %s found at %s",
                identity["dataset"],
                identity["version"],
                manifest.folder,
            )
            return manifest.folder
        seen.append(
            f"{manifest.folder} ({location.source} {location.dataset or '?'}): handoff {found}"
        )

    listing = (
        "\n".join(f"  {line}" for line in seen) or "  no relay manifest under the input folder"
    )
    folders = ", ".join(str(location.path) for location in inputs) or "none"
    raise HandoffMismatchError(
        f"the handoff {identity} is not mounted. Input folders: {folders}. Manifests seen:\n{listing}",
        expected=identity,
        found=seen,
    )
