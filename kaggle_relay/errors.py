"""Every error kaggle-relay raises, in one tree.

Each class also derives from the standard exception that callers already
catch (``ValueError``, ``OSError``, ``TimeoutError``, ``RuntimeError``), and
carries the path, kernel, dataset or version it is about as attributes.
This module is imported by the in-kernel runtime, so it uses the standard
library only.

    RelayError
    ├── CheckpointError
    │   ├── CheckpointInvalidError (ValueError)       path, reason
    │   ├── NoValidCheckpointError (LookupError)      searched, rejected
    │   ├── UnsafeCheckpointError (ValueError)        path, globals
    │   ├── StateMismatchError (ValueError)           what, saved, configured
    │   ├── HandoffMismatchError (ValueError)         expected, found
    │   ├── AcceleratorMismatchError (RuntimeError)   expected, found
    │   └── DiskSpaceError (OSError)                  path, needed, free
    ├── ReadOnlyLocationError (OSError)               path
    ├── ManifestError (ValueError)                    path
    ├── ConfigError (ValueError)                      path, field
    ├── CredentialsError (RuntimeError)
    ├── EndpointSeamError (RuntimeError)
    ├── KaggleApiError (RuntimeError)                 status, call, resource
    │   ├── KaggleAuthError                           (401, 403 outside processing)
    │   ├── KaggleNotFoundError (LookupError)         (404)
    │   ├── KaggleRejectedError (ValueError)          (4xx or a 200 carrying an error)
    │   ├── KaggleRateLimitError                      retry_after
    │   ├── KaggleUnavailableError                    (5xx, dropped connection, timeout)
    │   └── DatasetProcessingError                    (403 while a version processes)
    ├── KernelRunError (RuntimeError)                 kernel, version, status
    ├── DatasetVersionFailedError (RuntimeError)      dataset, version
    ├── UnsafeOutputPathError (ValueError)            name
    ├── WaitTimeoutError (TimeoutError)               what, waited
    ├── QuotaExceededError (RuntimeError)             used, quota, available_at
    └── ChainLockedError (RuntimeError)               chain
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RelayError(Exception):
    """Base of every kaggle-relay error."""

    #: A short hint ending in the command or setting that fixes the problem.
    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


# --- checkpoints (runtime) ---------------------------------------------------


class CheckpointError(RelayError):
    """A checkpoint could not be found, read or trusted."""


class CheckpointInvalidError(CheckpointError, ValueError):
    def __init__(self, path: str, reason: str, *, hint: str = "") -> None:
        super().__init__(f"{path}: {reason}", hint=hint)
        self.path = path
        self.reason = reason


class NoValidCheckpointError(CheckpointError, LookupError):
    def __init__(
        self, message: str, *, searched: Sequence[str] = (), rejected: Sequence[Any] = ()
    ) -> None:
        super().__init__(message)
        self.searched = list(searched)
        self.rejected = list(rejected)


class UnsafeCheckpointError(CheckpointError, ValueError):
    def __init__(self, path: str, globals_: Sequence[str], *, hint: str = "") -> None:
        names = ", ".join(globals_) or "unknown"
        super().__init__(
            f"{path}: loading needs globals that weights_only=True blocks: {names}",
            hint=hint
            or "if you trust this file, pass trust='full' (or list the globals in "
            "trusted_globals) for its source",
        )
        self.path = path
        self.globals = list(globals_)


class StateMismatchError(CheckpointError, ValueError):
    def __init__(self, what: str, saved: Any, configured: Any, *, hint: str = "") -> None:
        super().__init__(f"{what}: saved {saved!r}, configured {configured!r}", hint=hint)
        self.what = what
        self.saved = saved
        self.configured = configured


class HandoffMismatchError(CheckpointError, ValueError):
    def __init__(self, message: str, *, expected: Any = None, found: Any = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.found = found


class AcceleratorMismatchError(CheckpointError, RuntimeError):
    def __init__(self, expected: str, found: str) -> None:
        super().__init__(
            f"the session asked for accelerator {expected!r} but runs on {found!r}",
            hint="check machine_shape in kernel-metadata.json, or set accelerator in relay.toml",
        )
        self.expected = expected
        self.found = found


class DiskSpaceError(CheckpointError, OSError):
    def __init__(self, path: str, needed: int, free: int) -> None:
        super().__init__(
            f"not enough space to save {path}: needs {needed} bytes, {free} free",
            hint="prune older checkpoints (keep=N) or save a compact checkpoint",
        )
        self.path = path
        self.needed = needed
        self.free = free


class ReadOnlyLocationError(RelayError, OSError):
    def __init__(self, path: str, message: str = "") -> None:
        super().__init__(
            message or f"{path} is under /kaggle/input, which is read-only",
            hint="copy it to /kaggle/working first (make_writable_copy)",
        )
        self.path = path


class ManifestError(RelayError, ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


# --- configuration and credentials (relay) ----------------------------------


class ConfigError(RelayError, ValueError):
    def __init__(self, message: str, *, path: str = "", field: str = "", hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.field = field


class CredentialsError(RelayError, RuntimeError):
    hint = (
        "set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN, or put kaggle.json "
        "in $KAGGLE_CONFIG_DIR (default ~/.kaggle)"
    )


class EndpointSeamError(RelayError, RuntimeError):
    """The installed kagglesdk no longer has the internals the endpoint seam sets."""


# --- Kaggle API (relay) ------------------------------------------------------


class KaggleApiError(RelayError, RuntimeError):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        call: str = "",
        resource: str = "",
        hint: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.call = call
        self.resource = resource


class KaggleAuthError(KaggleApiError):
    hint = "check the Kaggle username and key (kaggle.json, KAGGLE_USERNAME/KAGGLE_KEY)"


class KaggleNotFoundError(KaggleApiError, LookupError):
    pass


class KaggleRejectedError(KaggleApiError, ValueError):
    pass


class KaggleRateLimitError(KaggleApiError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class KaggleUnavailableError(KaggleApiError):
    pass


class DatasetProcessingError(KaggleApiError):
    """HTTP 403 on a new dataset version while the previous one is still processing."""


class KernelRunError(RelayError, RuntimeError):
    def __init__(self, message: str, *, kernel: str, version: int | None, status: str) -> None:
        super().__init__(message)
        self.kernel = kernel
        self.version = version
        self.status = status


class DatasetVersionFailedError(RelayError, RuntimeError):
    def __init__(self, dataset: str, version: int | None, message: str = "") -> None:
        super().__init__(message or f"dataset {dataset} version {version} ended FAILED")
        self.dataset = dataset
        self.version = version


class UnsafeOutputPathError(RelayError, ValueError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"refusing output file {name!r}: {reason}")
        self.name = name


class WaitTimeoutError(RelayError, TimeoutError):
    def __init__(self, what: str, waited: float, last_state: str = "") -> None:
        state = f" (last state: {last_state})" if last_state else ""
        super().__init__(f"timed out after {waited:.0f} s waiting for {what}{state}")
        self.what = what
        self.waited = waited
        self.last_state = last_state


class QuotaExceededError(RelayError, RuntimeError):
    def __init__(self, message: str, *, used: float, quota: float, available_at: str) -> None:
        super().__init__(message)
        self.used = used
        self.quota = quota
        self.available_at = available_at


class ChainLockedError(RelayError, RuntimeError):
    def __init__(self, chain: str, holder: str = "") -> None:
        super().__init__(f"chain {chain!r} is being advanced by another process {holder}".strip())
        self.chain = chain
