"""Wrapper prefixes on state dict keys: ``module.`` (DataParallel, DistributedDataParallel) and
``_orig_mod.`` (torch.compile), nested in either order.

A prefix counts only when every key carries it. A state dict where some
keys carry a wrapper prefix and others do not is reported as a mismatch and
never stripped. Works on plain dicts, so torch is not imported.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kaggle_relay.errors import CheckpointInvalidError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Top-level names under which training checkpoints usually store the model weights.
MODEL_STATE_NAMES = ("model", "state_dict", "model_state_dict", "model_state", "net", "ema")

Mapped = TypeVar("Mapped", bound=Mapping[str, Any])


@dataclass(frozen=True)
class KeyPrefix:
    """The wrapper prefix carried by every key ("" for none), or a mismatch with its detail."""

    prefix: str = ""
    mismatch: bool = False
    detail: str = ""

    def __str__(self) -> str:
        if self.mismatch:
            return f"mismatch: {self.detail}"
        return self.prefix


def detect_key_prefix(keys: Iterable[str]) -> KeyPrefix:
    """Find the wrapper prefix that every key carries, peeling nested wrappers one at a time."""
    remaining = [key for key in keys if isinstance(key, str)]
    prefix = ""
    while remaining:
        carried = next((p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in remaining)), None)
        if carried is None:
            break
        prefix += carried
        remaining = [key[len(carried) :] for key in remaining]
    for wrapper in WRAPPER_PREFIXES:
        some = [key for key in remaining if key.startswith(wrapper)]
        if some:
            other = next(key for key in remaining if not key.startswith(wrapper))
            detail = (
                f"{len(some)} of {len(remaining)} keys start with {prefix + wrapper!r} "
                f"(e.g. {prefix + some[0]!r}) but {prefix + other!r} does not"
            )
            return KeyPrefix(prefix=prefix, mismatch=True, detail=detail)
    return KeyPrefix(prefix=prefix)


def strip_key_prefix(state_dict: Mapped, prefix: str | None = None) -> Mapped:
    """Return a copy of ``state_dict`` without the wrapper prefix every key carries.

    ``prefix`` defaults to the detected one; an explicit prefix must be carried
    by every key. A torch state dict's ``_metadata`` (module versions keyed by
    module path) is rewritten the same way, so ``load_state_dict`` still finds it.
    Raises CheckpointInvalidError for a mixed state dict.
    """
    if prefix is None:
        found = detect_key_prefix(state_dict.keys())
        if found.mismatch:
            raise CheckpointInvalidError("state_dict", f"key prefix {found}; strip nothing")
        prefix = found.prefix
    if not prefix:
        return state_dict
    bare = [key for key in state_dict if not key.startswith(prefix)]
    if bare:
        raise CheckpointInvalidError("state_dict", f"key {bare[0]!r} does not start with {prefix!r}")

    stripped: Any = OrderedDict() if isinstance(state_dict, OrderedDict) else {}
    for key, value in state_dict.items():
        stripped[key[len(prefix) :]] = value
    metadata = getattr(state_dict, "_metadata", None)
    if isinstance(metadata, Mapping):
        stripped._metadata = _strip_metadata(metadata, prefix)
    return stripped  # type: ignore[no-any-return]


def _strip_metadata(metadata: Mapping[str, Any], prefix: str) -> OrderedDict[str, Any]:
    # Module paths have no trailing dot ("module.fc"); the root module is "".
    result: OrderedDict[str, Any] = OrderedDict()
    for path, value in metadata.items():
        dotted = f"{path}." if path else ""
        if dotted.startswith(prefix):
            result[dotted[len(prefix) :].rstrip(".")] = value
        elif not prefix.startswith(dotted):
            result[path] = value
    return result


def find_model_state(tree: Any, is_tensor: Any) -> tuple[str, Mapping[str, Any]] | None:
    """Locate the model weights in a checkpoint tree: the tree itself, or one of ``MODEL_STATE_NAMES``.

    Returns (where, state dict) with ``where`` "" for the top level. ``is_tensor``
    returns whether a value is a tensor (or a placeholder for one).
    """
    if _is_state_dict(tree, is_tensor):
        return "", tree
    if isinstance(tree, Mapping):
        for name in MODEL_STATE_NAMES:
            value = tree.get(name)
            if isinstance(value, Mapping) and _is_state_dict(value, is_tensor):
                return name, value
    return None


def _is_state_dict(value: Any, is_tensor: Any) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    return all(isinstance(key, str) and is_tensor(item) for key, item in value.items())
