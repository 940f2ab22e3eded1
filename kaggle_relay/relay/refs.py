"""Kaggle references as types: ``owner/slug`` with an optional version ``N``.

The text form is the one the ``kaggle`` client accepts in ``dataset_sources``
and in its ``kernel`` and ``dataset`` arguments: ``owner/slug`` or
``owner/slug/N``. The web form ``owner/slug/versions/N`` is rejected by the
client, so it is rejected here with a hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import Enum
from typing import ClassVar, TypeVar

from kaggle_relay.errors import ConfigError

# Slug syntax the client applies to owners and slugs: lowercase letters and
# digits, with single hyphens inside (owners may also use underscores).
OWNER_PATTERN = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")
SLUG_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

_Ref = TypeVar("_Ref", bound="_VersionedRef")


@dataclass(frozen=True)
class _VersionedRef:
    owner: str
    slug: str
    version: int | None = None

    kind: ClassVar[str] = "reference"
    min_slug_length: ClassVar[int] = 1

    def __post_init__(self) -> None:
        text = f"{self.owner}/{self.slug}"
        if not OWNER_PATTERN.match(self.owner):
            raise self._invalid(text, f"owner {self.owner!r} must be lowercase letters, digits, '-' or '_'")
        if not SLUG_PATTERN.match(self.slug):
            raise self._invalid(
                text,
                f"slug {self.slug!r} must be lowercase letters, digits and single hyphens "
                "(no spaces, capitals, or leading/trailing hyphen)",
            )
        if len(self.slug) < self.min_slug_length:
            raise self._invalid(text, f"slug {self.slug!r} must have at least {self.min_slug_length} characters")
        if self.version is not None and (isinstance(self.version, bool) or self.version < 1):
            raise self._invalid(text, f"version {self.version!r} must be a positive integer")

    @classmethod
    def parse(cls: type[_Ref], text: str) -> _Ref:
        """Parse ``owner/slug`` or ``owner/slug/N``."""
        parts = text.strip().split("/")
        if len(parts) == 4 and parts[2] == "versions":
            raise cls._invalid(
                text,
                "the web form 'owner/slug/versions/N' is not accepted by the kaggle client",
                hint=f"write {parts[0]}/{parts[1]}/{parts[3]}",
            )
        if len(parts) not in (2, 3) or not all(parts):
            raise cls._invalid(text, f"expected 'owner/slug' or 'owner/slug/N' for a {cls.kind}")
        version = None
        if len(parts) == 3:
            if not parts[2].isdigit():
                raise cls._invalid(text, f"version {parts[2]!r} must be a positive integer")
            version = int(parts[2])
        return cls(parts[0], parts[1], version)

    @classmethod
    def _invalid(cls, text: str, rule: str, *, hint: str = "") -> ConfigError:
        return ConfigError(f"invalid {cls.kind} {text!r}: {rule}", field=cls.kind, hint=hint)

    @property
    def id(self) -> str:
        """The unversioned ``owner/slug``."""
        return f"{self.owner}/{self.slug}"

    def with_version(self: _Ref, version: int) -> _Ref:
        return replace(self, version=version)

    def unversioned(self: _Ref) -> _Ref:
        return replace(self, version=None)

    def require_version(self) -> int:
        """Return the version, or raise when the reference does not pin one."""
        if self.version is None:
            raise ValueError(
                f"{self.kind} {self} carries no version; pass the version a push or publish "
                "returned (right after a push Kaggle may still answer for the previous version)"
            )
        return self.version

    def __str__(self) -> str:
        return self.id if self.version is None else f"{self.id}/{self.version}"


@dataclass(frozen=True)
class KernelRef(_VersionedRef):
    """A notebook or script, optionally one of its versions."""

    kind: ClassVar[str] = "kernel"
    # The kaggle client rejects kernel slugs shorter than five characters.
    min_slug_length: ClassVar[int] = 5


@dataclass(frozen=True)
class DatasetRef(_VersionedRef):
    """A dataset, optionally one of its versions."""

    kind: ClassVar[str] = "dataset"


def wire_enum_name(value: object, prefix: str) -> str:
    """Return the member name of a Kaggle enum value in any spelling the client returns.

    Accepts the kagglesdk enum, ``"READY"``, ``"ready"``, ``"<TYPE>.READY"`` and
    the name with its type prefix (``prefix``, such as ``"KERNEL_WORKER_STATUS_"``).
    """
    name = getattr(value, "name", None) if isinstance(value, Enum) else None
    text = str(name or value).strip().upper().rsplit(".", 1)[-1]
    return text.removeprefix(prefix)
