"""Load a checkpoint safely: ``weights_only=True`` unless the trust policy for its source allows more.

Trust levels (see ``trust.TrustPolicy``):

- ``weights_only``: ``torch.load(weights_only=True)``, which loads tensors,
  numbers, strings and containers and refuses every other pickled global;
- ``globals``: the same loader with the policy's named globals allowed
  through ``torch.serialization.safe_globals``;
- ``full``: ``torch.load(weights_only=False)``, which runs code from the
  file. It is used only when the user names that level for the source or
  dataset, and even then a file that needs a global from ``os``,
  ``subprocess``, ``builtins.eval`` and the like is refused before loading.

Zip files are memory-mapped by default (``mmap=True``), so only the tensors
the caller touches are read. Legacy (non-zip) torch files cannot be mapped
and are loaded normally. Safetensors files load with the safetensors package.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
import struct
import sys
from collections.abc import Mapping
from typing import Any

from kaggle_relay.errors import CheckpointInvalidError, UnsafeCheckpointError
from kaggle_relay.runtime import formats, keys, writable
from kaggle_relay.runtime import trust as _trust

log = logging.getLogger(__name__)

TrustSetting = _trust.TrustPolicy | _trust.TrustDecision | str | None
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def _path_and_source(path_or_candidate: Any) -> tuple[str, str, str]:
    """Return (path, source, dataset) for a path or a Candidate."""
    if hasattr(path_or_candidate, "path") and hasattr(path_or_candidate, "source"):
        return (
            str(path_or_candidate.path),
            path_or_candidate.source,
            getattr(path_or_candidate, "dataset", ""),
        )
    path = os.fspath(path_or_candidate)
    # A bare path under the input folder may be anyone's dataset, so it gets the strictest source.
    under_input = writable.is_under(path, writable.input_root())
    return path, _trust.INPUT_DATASET if under_input else _trust.WORKING, ""


def trust_decision(setting: TrustSetting, source: str, dataset: str) -> _trust.TrustDecision:
    """Return the trust level for one file from a policy, a decision or a level name."""
    if setting is None:
        return _trust.TrustDecision()
    if isinstance(setting, _trust.TrustDecision):
        return setting
    if isinstance(setting, str):
        # A level named in the call is the user's opt-in for this one file.
        _trust.TrustPolicy(sources={_trust.WORKING: setting})  # validates the level name
        return _trust.TrustDecision(setting, frozenset(), "trust argument")
    return setting.decide(source, dataset)


def resolve_global(name: str) -> Any:
    """Import the object named ``module.attribute`` (``__main__`` included) for ``safe_globals``."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            value: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                value = getattr(value, attribute)
        except AttributeError:
            continue
        return value
    raise CheckpointInvalidError(
        name, f"the trusted global {name!r} cannot be imported ({_trust.describe_importable(name)})"
    )


def blocked_globals(path: str, error: BaseException) -> list[str]:
    """Return every global of the file that weights_only blocks.

    torch's error names only the first one, so the file's pickle is also
    read by ``formats.check_file``, which lists them all without running any.
    """
    names = [match.group(1) for match in _BLOCKED_GLOBAL.finditer(str(error))]
    try:
        names += formats.check_file(path, legacy_torch_load=False).blocked
    except OSError as exc:
        log.debug("cannot list the globals of %s: %s", path, exc)
    return list(dict.fromkeys(names))


def _refuse_dangerous(path: str, decision: _trust.TrustDecision) -> None:
    # Even a fully trusted file is scanned first, because a checkpoint never needs os or eval.
    check = formats.check_file(path, legacy_torch_load=False)
    dangerous = [name for name in check.blocked if _trust.never_trusted(name)]
    if dangerous:
        raise UnsafeCheckpointError(path, dangerous, hint=_trust.opt_out_hint("", "", dangerous))


def _torch_load(path: str, map_location: Any, decision: _trust.TrustDecision, mmap: bool) -> Any:
    import torch

    if decision.level == _trust.FULL:
        _refuse_dangerous(path, decision)
        log.warning("loading %s with weights_only=False (trust rule %s)", path, decision.rule)
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    if decision.level == _trust.GLOBALS and decision.allowed_globals:
        allowed = [
            resolve_global(name)
            for name in sorted(decision.allowed_globals)
            if not _trust.never_trusted(name)
        ]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def _load_safetensors(path: str, map_location: Any) -> dict[str, Any]:
    from safetensors.torch import load_file

    device = map_location if isinstance(map_location, str) else "cpu"
    return load_file(path, device=device)


def _strip(obj: Any, path: str) -> Any:
    found = keys.find_model_state(obj, lambda value: hasattr(value, "shape"))
    if found is None:
        log.debug("strip_prefix: no state dict found in %s", path)
        return obj
    where, state = found
    stripped = keys.strip_key_prefix(state)
    if not where:
        return stripped
    result = dict(obj)
    result[where] = stripped
    return result


def load_checkpoint(
    path_or_candidate: Any,
    *,
    map_location: Any = "cpu",
    trust: TrustSetting = None,
    mmap: bool | None = None,
    strip_prefix: bool = False,
) -> Any:
    """Load a checkpoint file (a path or a ``Candidate`` from the scan) with the trust its source allows.

    ``trust`` is a TrustPolicy (decides by the candidate's source and
    dataset), or a level name for this file alone. ``mmap`` defaults to
    True for zip files and is always False for legacy ones. ``strip_prefix``
    removes a ``module.`` / ``_orig_mod.`` prefix carried by every key of the
    model state. Raises UnsafeCheckpointError naming the blocked globals and
    the setting that would allow them, and CheckpointInvalidError with a
    readable reason for a damaged file.
    """
    path, source, dataset = _path_and_source(path_or_candidate)
    decision = trust_decision(trust, source, dataset)
    kind = formats.detect_format(path)
    if kind == formats.SAFETENSORS:
        obj: Any = _load_safetensors(path, map_location)
    elif kind in (formats.TORCH_ZIP, formats.TORCH_LEGACY):
        use_mmap = kind == formats.TORCH_ZIP and mmap is not False
        if mmap and not use_mmap:
            log.debug(
                "%s is a legacy torch file, which cannot be memory-mapped: loading it normally",
                path,
            )
        obj = _load_torch_file(path, map_location, decision, use_mmap, source, dataset)
    else:
        reason = (
            formats.check_file(path, legacy_torch_load=False).reason or f"unsupported format {kind}"
        )
        raise CheckpointInvalidError(
            path, reason, hint="a Trainer folder is loaded file by file; pass its weight file"
        )
    return _strip(obj, path) if strip_prefix else obj


def _load_torch_file(
    path: str,
    map_location: Any,
    decision: _trust.TrustDecision,
    mmap: bool,
    source: str,
    dataset: str,
) -> Any:
    try:
        return _torch_load(path, map_location, decision, mmap)
    except UnsafeCheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        # A file cut inside a GLOBAL name makes torch report a blocked global that does not
        # exist (``collections.Order``), so a cut file is reported as cut first.
        complete = formats.check_file(path, legacy_torch_load=False).complete
        names = blocked_globals(path, exc) if complete else []
        if not names:
            raise CheckpointInvalidError(path, formats.explain_load_error(path, exc)) from exc
        refused = decision.rejected(names)
        raise UnsafeCheckpointError(
            path, refused or names, hint=_trust.opt_out_hint(source, dataset, refused or names)
        ) from exc
    except (AttributeError, ImportError) as exc:
        # A trusted load unpickles classes by name; one defined in a notebook's __main__ may be absent here.
        raise CheckpointInvalidError(
            path, f"a trusted global cannot be imported: {exc}", hint="define or import it before loading"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, struct.error) as exc:
        # torch's weights_only unpickler raises IndexError and struct.error on a pickle cut short.
        raise CheckpointInvalidError(path, formats.explain_load_error(path, exc)) from exc


def model_state(obj: Any) -> Mapping[str, Any] | None:
    """Return the model weights inside a loaded checkpoint (the object itself or its ``model`` entry)."""
    found = keys.find_model_state(obj, lambda value: hasattr(value, "shape"))
    return found[1] if found else None
