"""Metadata rules that Kaggle enforces on kernels and datasets, as the emulator checks them.

The length limits are the ones kaggle 2.2.5 checks on its side: dataset
slug and title 6 to 50 characters, subtitle 20 to 80, kernel slug and title
at least 5. The server checks them again because other clients (and
``id_no`` pushes) skip the client's checks.

NOTE: the licence names, machine shapes and the slug character set are the
publicly documented values, not read from a Kaggle server. So a name missing
here is rejected by the emulator even if Kaggle accepts it.
"""

from __future__ import annotations

import re

from kaggle_relay.emulator.protocol import ApiError

LICENSES = frozenset(
    {
        "CC0-1.0", "CC-BY-SA-4.0", "CC-BY-SA-3.0", "CC-BY-4.0", "CC-BY-3.0", "CC-BY-3.0-IGO",
        "CC-BY-NC-4.0", "CC-BY-NC-SA-4.0", "CC-BY-NC-SA-3.0-IGO", "CC-BY-ND-4.0",
        "CC-BY-NC-ND-4.0", "GPL-2.0", "GPL-3.0", "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "ODbL-1.0",
        "ODC-BY-1.0", "PDDL", "DbCL-1.0", "CDLA-Permissive-1.0", "CDLA-Sharing-1.0",
        "apache-2.0", "MIT", "EU-ODP-Legal-Notice", "US-Government-Works", "world-bank",
        "reddit-api", "copyright-authors", "unknown", "other",
    }
)  # fmt: skip

MACHINE_SHAPES = {
    name.lower(): name
    for name in (
        "NvidiaTeslaT4", "NvidiaTeslaP100", "NvidiaL4", "NvidiaL4X1", "NvidiaH100",
        "TpuV5E8", "TpuV38", "Tpu1VmV38", "TpuV6E8", "None",
    )
}  # fmt: skip

PLACEHOLDER_SLUG = "INSERT_SLUG_HERE"
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def slugify_title(title: str) -> str:
    """Kaggle's slug of a title: lower case, runs of other characters become one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def check_owner(owner: str, user: str, what: str) -> None:
    if owner != user:
        raise ApiError(
            403,
            f"Permission denied: {what} owner {owner!r} is not the authenticated user {user!r}",
        )


def dataset_slug_error(slug: str) -> str | None:
    if slug == PLACEHOLDER_SLUG:
        return "The dataset slug is still the placeholder INSERT_SLUG_HERE; choose a slug."
    if not 6 <= len(slug) <= 50:
        return f"The dataset slug {slug!r} must be between 6 and 50 characters."
    if not _SLUG.match(slug):
        return (
            f"The dataset slug {slug!r} may contain only lower-case letters, digits and "
            "single hyphens between them."
        )
    return None


def dataset_title_error(title: str | None) -> str | None:
    if not title or not 6 <= len(title) <= 50:
        return f"The dataset title {title!r} must be between 6 and 50 characters."
    return None


def subtitle_error(subtitle: str | None) -> str | None:
    if subtitle and not 20 <= len(subtitle) <= 80:
        return f"The subtitle must be between 20 and 80 characters (it has {len(subtitle)})."
    return None


def license_error(name: str | None) -> str | None:
    if name not in LICENSES:
        return f"Unknown license {name!r}; use one of: {', '.join(sorted(LICENSES))}."
    return None


def kernel_slug_error(slug: str) -> str | None:
    if slug == PLACEHOLDER_SLUG:
        return "The kernel slug is still the placeholder INSERT_SLUG_HERE; choose a slug."
    if len(slug) < 5:
        return f"The kernel slug {slug!r} must be at least five characters."
    if not _SLUG.match(slug):
        return (
            f"The kernel slug {slug!r} may contain only lower-case letters, digits and "
            "single hyphens between them."
        )
    return None


def machine_shape(name: str | None) -> str | None:
    """Return the canonical machine shape name, None for none, or raise ApiError."""
    if not name:
        return None
    canonical = MACHINE_SHAPES.get(name.lower())
    if canonical is None:
        raise ApiError(
            400,
            f"Invalid machine shape {name!r}; valid shapes: {', '.join(MACHINE_SHAPES.values())}",
        )
    return None if canonical == "None" else canonical
