"""relay.toml: the chains a project carries across Kaggle sessions.

A minimal file::

    [[chain]]
    name = "digits"
    kernel = "kernel"                      # folder with kernel-metadata.json, or "owner/slug"
    dataset = "alice/digits-handoff"       # the handoff dataset, created on the first publish
    patterns = ["ckpt-*.pt"]
    require_keys = ["model", "optimizer"]
    metric = "val_acc"
    mode = "max"
    accelerator = "NvidiaTeslaT4"          # a Kaggle machine_shape, or "none"

Relative paths are resolved against the folder holding relay.toml. Every
validation error names the file, the field and what to write instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kaggle_relay.errors import ConfigError
from kaggle_relay.relay.refs import DatasetRef
from kaggle_relay.relay.retry import RetryPolicy

CONFIG_NAME = "relay.toml"
STATE_DIR_NAME = ".relay"
ENDPOINT_ENV = "KAGGLE_RELAY_API_ENDPOINT"

#: Kaggle machine_shape names the relay accepts (client 2.2.5; NvidiaTeslaP100 is retired
#: and runs on a T4 instead, so it is refused rather than silently substituted).
GPU_SHAPES = ("NvidiaTeslaT4", "NvidiaL4")
TPU_SHAPES = ("TpuV5E8",)
ACCELERATORS = ("none", *GPU_SHAPES, *TPU_SHAPES)

#: Kaggle's session limits in seconds: 12 h, and 9 h on TPU.
SESSION_LIMIT = 43200
TPU_SESSION_LIMIT = 32400

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SLUG_RE = re.compile(r"^[^/\s]+/[^/\s]+$")

# Fix suggested for each field name, shown as the error's hint.
_FIXES = {
    "name": "use letters, digits, '.', '_' or '-' (it names files under .relay/)",
    "kernel": "give a folder holding kernel-metadata.json (relative to relay.toml) or 'owner/slug'",
    "dataset": "write the handoff dataset as 'owner/slug', without a version",
    "mode": "write mode = \"max\" for a score such as accuracy or \"min\" for a loss",
    "metric": "name a metric the training script records with each checkpoint",
    "accelerator": "write one of: " + ", ".join(ACCELERATORS),
    "session_timeout": f"give seconds between 60 and {SESSION_LIMIT}",
    "patterns": "give file name globs such as [\"ckpt-*.pt\"]",
    "endpoint": "give an http:// URL, such as the one `kaggle-relay emulator serve` prints",
    "chain": "add at least one [[chain]] table",
}


class _RuleError(ValueError):
    """A rule across several fields was broken; it carries its own fix, since no single field's fix applies."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StopRules(_Strict):
    """When a chain stops pushing new sessions."""

    done_flag: bool = True
    """Stop when the published manifest has ``done`` set."""
    max_days: int | None = Field(default=None, gt=0)
    """Stop after this many sessions (days)."""
    target: float | None = None
    """Stop once the selected checkpoint's metric reaches this value (needs ``metric``)."""
    no_progress_runs: int | None = Field(default=3, gt=0)
    """Stop after this many finished sessions in a row without a better metric (or a later step)."""
    max_failed_runs: int = Field(default=2, ge=0)
    """Sessions in a row that may end without a newer valid checkpoint before the chain fails."""


class Waits(_Strict):
    """How often to poll and how long one tick may wait, in seconds."""

    poll_seconds: float = Field(default=60.0, gt=0)
    """Interval between kernel status polls when waiting (``next-day --wait``)."""
    dataset_ready_seconds: float = Field(default=900.0, gt=0)
    """Maximum wait for a new handoff dataset version to become READY within one tick."""


class Quota(_Strict):
    """Weekly accelerator hours shared by every chain of the project.

    Kaggle documents a weekly quota of about 30 GPU hours and 20 TPU hours
    (it varies per account); set your own numbers from your Kaggle settings page.
    """

    gpu_hours: float = Field(default=30.0, ge=0)
    tpu_hours: float = Field(default=20.0, ge=0)


class ChainConfig(_Strict):
    """One chain: a kernel pushed day after day, handing checkpoints over through a dataset."""

    name: str
    kernel: str
    dataset: str
    dataset_title: str | None = None
    patterns: list[str] = Field(default_factory=lambda: ["*.pt", "*.pth", "*.safetensors"], min_length=1)
    require_keys: list[str] = Field(default_factory=list)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    carry: list[str] = Field(default_factory=list)
    accelerator: str = "none"
    session_timeout: int | None = Field(default=None, ge=60, le=SESSION_LIMIT)
    stop: StopRules = Field(default_factory=StopRules)
    retry: RetryPolicy | None = None
    """API call retries; unset, each kind of call uses its own default policy."""
    wait: Waits = Field(default_factory=Waits)
    endpoint: str | None = None

    # Set by load_config, not by the user.
    project_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"invalid chain name {value!r}")
        return value

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, value: str) -> str:
        ref = DatasetRef.parse(value)
        if ref.version is not None:
            raise ValueError(f"invalid dataset {value!r}: the relay picks the version; write {ref.id!r}")
        return ref.id

    @field_validator("accelerator")
    @classmethod
    def _check_accelerator(cls, value: str) -> str:
        if value not in ACCELERATORS:
            raise ValueError(f"unknown accelerator {value!r}")
        return value

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"invalid endpoint {value!r}")
        return value

    @model_validator(mode="after")
    def _check_metric(self) -> ChainConfig:
        if self.metric and self.mode is None:
            raise _RuleError(
                f"metric {self.metric!r} needs mode = \"max\" or \"min\"; no direction is assumed",
                hint=f'add mode = "min" or mode = "max" to chain {self.name!r} ("min" for a loss, "max" for a score)',
            )
        if self.stop.target is not None and not self.metric:
            raise _RuleError(
                "stop.target needs a metric",
                hint=f'add metric = "NAME" and mode to chain {self.name!r}, or remove target from its [chain.stop]',
            )
        return self

    @property
    def kernel_is_folder(self) -> bool:
        """Tell whether ``kernel`` names a local folder (else it is an ``owner/slug`` on Kaggle)."""
        return (self.kernel_folder / "kernel-metadata.json").is_file()

    @property
    def kernel_folder(self) -> Path:
        return (self.project_dir / self.kernel).resolve()

    @property
    def accelerator_kind(self) -> Literal["none", "gpu", "tpu"]:
        if self.accelerator in GPU_SHAPES:
            return "gpu"
        if self.accelerator in TPU_SHAPES:
            return "tpu"
        return "none"

    @property
    def session_limit(self) -> int:
        """Seconds one session may run: the configured timeout, else Kaggle's limit."""
        if self.session_timeout:
            return self.session_timeout
        return TPU_SESSION_LIMIT if self.accelerator_kind == "tpu" else SESSION_LIMIT

    def resolved_endpoint(self) -> str | None:
        """Return the API endpoint: KAGGLE_RELAY_API_ENDPOINT wins over relay.toml."""
        return os.environ.get(ENDPOINT_ENV) or self.endpoint


class RelayConfig(_Strict):
    """The whole relay.toml."""

    endpoint: str | None = None
    quota: Quota = Field(default_factory=Quota)
    chain: list[ChainConfig] = Field(min_length=1)

    path: Path = Field(default=Path(CONFIG_NAME), exclude=True)

    @model_validator(mode="after")
    def _check_unique_names(self) -> RelayConfig:
        names = [chain.name for chain in self.chain]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise _RuleError(
                f"chain names must be unique; repeated: {', '.join(duplicates)}",
                hint="rename the repeated [[chain]] tables: each name is a ledger file under .relay/",
            )
        return self

    @property
    def project_dir(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        """The folder holding ledgers, locks, logs and downloads: ``.relay/`` beside relay.toml."""
        return self.project_dir / STATE_DIR_NAME

    def select(self, name: str | None) -> list[ChainConfig]:
        """Return every chain, or the one called ``name``."""
        if name is None:
            return list(self.chain)
        for chain in self.chain:
            if chain.name == name:
                return [chain]
        known = ", ".join(chain.name for chain in self.chain)
        # No ``path``: the mistake is the name given on the command line, not the file (usage error).
        raise ConfigError(
            f"{self.path}: no chain named {name!r}; the chains are: {known}",
            field="chain.name",
            hint=f"use one of: {known}",
        )


def load_config(path: str | os.PathLike[str] = CONFIG_NAME) -> RelayConfig:
    """Read and validate relay.toml; raise ConfigError naming the field and the fix."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: not found",
            path=str(path),
            hint="run `kaggle-relay init DIR` to write one, or pass --config PATH",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", path=str(path), hint="fix the syntax at that line") from exc
    return parse_config(raw, path=path)


def parse_config(raw: dict[str, Any], *, path: Path) -> RelayConfig:
    """Validate an already parsed relay.toml and bind it to ``path``."""
    try:
        config = RelayConfig.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, path) from None
    chains = [_bind_chain(chain, config, path) for chain in config.chain]
    return config.model_copy(update={"chain": chains, "path": path})


def _bind_chain(chain: ChainConfig, config: RelayConfig, path: Path) -> ChainConfig:
    bound = chain.model_copy(update={"project_dir": path.parent, "endpoint": chain.endpoint or config.endpoint})
    if not bound.kernel_is_folder and not _SLUG_RE.match(chain.kernel):
        raise ConfigError(
            f"{path}: chain {chain.name!r}: kernel folder {bound.kernel_folder} has no kernel-metadata.json",
            path=str(path),
            field="kernel",
            hint=_FIXES["kernel"],
        )
    return bound


def _config_error(exc: ValidationError, path: Path) -> ConfigError:
    first = exc.errors()[0]
    location = _format_location(first["loc"])
    field = next((str(part) for part in reversed(first["loc"]) if isinstance(part, str)), "")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown setting (misspelt?)"
    elif first["type"] == "missing":
        message = "missing"
    lines = [f"{path}: {location}: {message}"]
    if len(exc.errors()) > 1:
        lines.append(f"({len(exc.errors()) - 1} more problem(s) after this one)")
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, _RuleError):
        hint = cause.hint
    else:
        hint = _FIXES.get(field, "see the commented relay.toml that `kaggle-relay init` writes")
    return ConfigError(" ".join(lines), path=str(path), field=location, hint=hint)


def _format_location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text or "(top level)"
