"""Validate one checkpoint from its metadata and describe it as a ``Candidate``.

A candidate is valid only when all of these hold:

1. its format is known (torch zip, legacy torch, safetensors, Trainer folder);
2. it is complete: every byte its metadata references is present;
3. it loads under ``weights_only``, judged by the restricted unpickler in
   ``peek`` (torch is not imported), or its blocked globals are allowed by the
   trust policy for its source;
4. it has every required key. A required key is a top-level name
   (``optimizer``) or a dotted path into nested dicts (``model.fc.weight``
   finds key ``fc.weight`` under ``model``). A wrapper prefix carried by every
   key of a dict (``module.``, ``_orig_mod.``) is ignored in that match and
   reported in ``key_prefix``;
5. when a metric is requested, the candidate has it and it is finite;
6. when the manifest beside the file has an entry for it, size and sha256
   match. The hash is computed only then; a Trainer folder is not hashed.

Epoch, step and metrics come from the manifest entry when it has them, then
from the checkpoint (top-level ``epoch``, ``step`` or ``global_step``, a
``metrics`` dict and other numbers at the top level; safetensors metadata;
``trainer_state.json``), then from the file name (``step_100``,
``ckpt-step000200``, ``epoch=3``, ``checkpoint-500``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kaggle_relay.errors import ManifestError
from kaggle_relay.runtime import formats, keys
from kaggle_relay.runtime import trust as _trust
from kaggle_relay.runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    load_manifest,
    sha256_file,
)
from kaggle_relay.runtime.peek import TensorRef

MANIFEST_MATCHED = "matched"
MANIFEST_NO_ENTRY = "no entry"
MANIFEST_MISMATCH = "mismatch"

_STEP_NAMES = ("step", "global_step")
_NAME_STEP = re.compile(r"(?:global_step|step|checkpoint|iter)[-_=]?0*(\d+)", re.IGNORECASE)
_NAME_EPOCH = re.compile(r"epoch[-_=]?0*(\d+)", re.IGNORECASE)


@dataclass
class Candidate:
    """One checkpoint found on disk, valid or not, and the facts that decide selection."""

    path: str
    source: str = _trust.WORKING
    format: str = formats.UNKNOWN
    bytes: int = 0
    valid: bool = False
    reason: str = ""
    epoch: int | float | None = None
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    key_prefix: str = ""
    blocked_globals: list[str] = field(default_factory=list)
    manifest: str = MANIFEST_NO_ENTRY
    run_id: str = ""
    created: str = ""
    dataset: str = ""
    step_from: str = ""
    notes: list[str] = field(default_factory=list)

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return value if value is not None and math.isfinite(value) else None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (NaN and infinite metrics become strings)."""
        data = asdict(self)
        data["metrics"] = {name: _json_number(value) for name, value in self.metrics.items()}
        return data


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def validate_checkpoint(
    path: str | os.PathLike[str],
    *,
    source: str = _trust.WORKING,
    require_keys: Sequence[str] = (),
    metric: str | None = None,
    manifest_entry: ManifestEntry | None = None,
    trust: _trust.TrustPolicy | None = None,
    dataset: str = "",
) -> Candidate:
    """Validate one file or Trainer folder; see the module docstring for the rules.

    Without ``manifest_entry`` the manifest in the file's folder is read, if any.
    """
    path = os.fspath(path)
    manifest_problem = ""
    if manifest_entry is None:
        manifest, manifest_problem = manifest_for(os.path.dirname(path) or ".", {})
        manifest_entry = manifest.entry(os.path.basename(path)) if manifest else None
    return validate_with(
        path,
        source=source,
        dataset=dataset,
        require_keys=require_keys,
        metric=metric,
        entry=manifest_entry,
        manifest_problem=manifest_problem,
        policy=trust,
    )


def validate_with(
    path: str,
    *,
    source: str,
    dataset: str = "",
    require_keys: Sequence[str] = (),
    metric: str | None = None,
    entry: ManifestEntry | None = None,
    manifest_problem: str = "",
    policy: _trust.TrustPolicy | None = None,
    run_id: str = "",
) -> Candidate:
    """Validate with the manifest already read (the scan reads each folder's manifest once)."""
    candidate = Candidate(path=path, source=source, dataset=dataset, run_id=run_id)
    try:
        check = formats.check_file(path, expected_bytes=entry.bytes if entry else None)
    except OSError as exc:
        candidate.reason = f"cannot be read ({exc.strerror or exc})"
        return candidate
    candidate.format, candidate.bytes = check.format, check.bytes
    candidate.blocked_globals = list(check.blocked)
    candidate.notes.extend(check.notes)
    _describe_tree(candidate, check)
    _apply_manifest_facts(candidate, entry)

    problems = _format_problems(candidate, check, policy)
    if manifest_problem:
        problems.append(f"manifest cannot be used: {manifest_problem}")
    if check.complete:
        problems += _content_problems(check.tree, require_keys, candidate, metric)
        problems += _manifest_problems(candidate, entry)
    candidate.valid = not problems
    candidate.reason = "; ".join(problems)
    return candidate


# --- facts --------------------------------------------------------------------


def _describe_tree(candidate: Candidate, check: formats.FormatCheck) -> None:
    tree = check.tree
    if isinstance(tree, Mapping):
        candidate.keys = [str(key) for key in tree]
    found = keys.find_model_state(tree, _is_tensor)
    if found is not None:
        candidate.key_prefix = _key_prefix(found[1])

    if check.format == formats.SAFETENSORS:
        epoch, step, metrics = _facts_from_strings(check.metadata)
    elif check.format == formats.DIRECTORY:
        epoch, step, metrics = _facts_from_trainer_state(tree.get("trainer_state") if isinstance(tree, dict) else None)
    else:
        epoch, step, metrics = _facts_from_tree(tree)
    candidate.epoch, candidate.metrics = epoch, metrics
    if step is not None:
        candidate.step, candidate.step_from = step, "checkpoint"
    _facts_from_name(candidate)


def _key_prefix(state: Mapping[str, Any]) -> str:
    # Most state dicts carry no wrapper prefix at all. Searching the keys joined by NUL
    # shows that in one str.find per prefix, instead of a startswith per key.
    joined = "\0" + "\0".join(state)
    if not any("\0" + prefix in joined for prefix in keys.WRAPPER_PREFIXES):
        return ""
    return str(keys.detect_key_prefix(state.keys()))


# isinstance(value, TensorRef), as a C-level callable: find_model_state calls it once per tensor.
_is_tensor = TensorRef.__instancecheck__


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _whole(value: Any) -> int | None:
    number = _number(value)
    if number is None or not math.isfinite(number) or number != int(number):
        return None
    return int(number)


def _facts_from_tree(tree: Any) -> tuple[int | float | None, int | None, dict[str, float]]:
    if not isinstance(tree, Mapping):
        return None, None, {}
    epoch = _epoch(tree.get("epoch"))
    step = next((_whole(tree[name]) for name in _STEP_NAMES if _whole(tree.get(name)) is not None), None)
    metrics: dict[str, float] = {}
    for name, value in tree.items():
        number = _number(value)
        if number is not None and name not in ("epoch", *_STEP_NAMES) and isinstance(name, str):
            metrics[name] = number
    nested = tree.get("metrics")
    if isinstance(nested, Mapping):
        metrics.update({str(k): v for k, v in ((k, _number(v)) for k, v in nested.items()) if v is not None})
    return epoch, step, metrics


def _epoch(value: Any) -> int | float | None:
    whole = _whole(value)
    if whole is not None:
        return whole
    return _number(value)


def _facts_from_strings(metadata: Mapping[str, str]) -> tuple[int | float | None, int | None, dict[str, float]]:
    values: dict[str, Any] = {}
    for name, text in metadata.items():
        try:
            values[name] = float(text)
        except ValueError:
            continue
    return _facts_from_tree(values)


def _facts_from_trainer_state(state: Any) -> tuple[int | float | None, int | None, dict[str, float]]:
    if not isinstance(state, Mapping):
        return None, None, {}
    metrics: dict[str, float] = {}
    for record in state.get("log_history") or []:
        if isinstance(record, Mapping):
            metrics.update({k: v for k, v in ((k, _number(v)) for k, v in record.items()) if v is not None})
    for name in ("epoch", "step"):
        metrics.pop(name, None)
    best = _number(state.get("best_metric"))
    if best is not None:
        metrics["best_metric"] = best
    return _epoch(state.get("epoch")), _whole(state.get("global_step")), metrics


def _facts_from_name(candidate: Candidate) -> None:
    name = os.path.basename(candidate.path.rstrip("/"))
    if candidate.step is None:
        match = _NAME_STEP.search(name)
        if match:
            candidate.step, candidate.step_from = int(match.group(1)), "name"
    if candidate.epoch is None:
        match = _NAME_EPOCH.search(name)
        if match:
            candidate.epoch = int(match.group(1))


def _apply_manifest_facts(candidate: Candidate, entry: ManifestEntry | None) -> None:
    if entry is None:
        return
    if entry.step is not None:
        candidate.step, candidate.step_from = int(entry.step), "manifest"
    if entry.epoch is not None:
        candidate.epoch = entry.epoch
    if entry.metrics:
        candidate.metrics = {str(k): v for k, v in ((k, _number(v)) for k, v in entry.metrics.items()) if v is not None}
    candidate.created = entry.created or candidate.created
    candidate.run_id = entry.run_id or candidate.run_id


# --- problems -----------------------------------------------------------------


def _format_problems(candidate: Candidate, check: formats.FormatCheck, policy: _trust.TrustPolicy | None) -> list[str]:
    if check.format == formats.UNKNOWN:
        return [check.reason or "unknown format"]
    if not check.complete:
        return [check.reason or check.load_error or "incomplete"]
    if check.load_error:
        return [f"cannot be loaded with weights_only=True: {check.load_error}"]
    if not check.blocked:
        return []
    decision = (policy or _trust.TrustPolicy()).decide(candidate.source, candidate.dataset)
    rejected = decision.rejected(check.blocked)
    if not rejected:
        candidate.notes.append(f"needs globals trusted by {decision.rule} ({decision.level}): {', '.join(check.blocked)}")
        # Trusted is not enough: a class from a notebook's __main__ that this process lacks fails the load.
        missing = [(name, _trust.describe_importable(name)) for name in check.blocked]
        missing = [(name, found) for name, found in missing if found.startswith("not importable")]
        if missing:
            named = "; ".join(f"{name} ({found})" for name, found in missing)
            return [f"trusted globals cannot be imported in this process: {named}"]
        return []
    named = ", ".join(f"{name} ({_trust.describe_importable(name)})" for name in rejected)
    hint = _trust.opt_out_hint(candidate.source, candidate.dataset, rejected)
    return [f"structurally sound but needs trusted globals: {named}; weights_only blocks them; {hint}"]


def _content_problems(tree: Any, require_keys: Iterable[str], candidate: Candidate, metric: str | None) -> list[str]:
    problems = []
    missing = [key for key in require_keys if not has_key(tree, key)]
    if missing:
        problems.append(f"missing required keys: {', '.join(missing)}")
    if metric:
        value = candidate.metrics.get(metric)
        if value is None:
            problems.append(f"metric {metric!r} missing")
        elif not math.isfinite(value):
            problems.append(f"metric {metric!r} is {value}, not a finite number")
    return problems


def _manifest_problems(candidate: Candidate, entry: ManifestEntry | None) -> list[str]:
    if entry is None:
        return []
    if candidate.format == formats.DIRECTORY:
        candidate.manifest = MANIFEST_MATCHED
        candidate.notes.append("Trainer folder: manifest size and sha256 not checked")
        return []
    if entry.bytes != candidate.bytes:
        candidate.manifest = MANIFEST_MISMATCH
        return [f"size {candidate.bytes} bytes differs from the manifest's {entry.bytes}"]
    if _cached_sha256(candidate.path) != entry.sha256:
        candidate.manifest = MANIFEST_MISMATCH
        return ["sha256 differs from the manifest: the file changed after it was recorded"]
    candidate.manifest = MANIFEST_MATCHED
    return []


_HASHES: dict[tuple[int, int, int, int, int], str] = {}


def _hash_key(path: str | os.PathLike[str]) -> tuple[int, int, int, int, int]:
    # The file's identity, not its name, so a hard link shares the hash. A rewrite changes the
    # mtime or the ctime: a new file in a reused inode with its old mtime restored (cp -p) still
    # gets a new ctime. Adding a link changes the ctime too, so the code that links a hashed file
    # records its hash again (publish._place).
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _cached_sha256(path: str) -> str:
    key = _hash_key(path)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the sha256 of ``path``, read once per process while the file stays unchanged."""
    return _cached_sha256(os.fspath(path))


def known_sha256(path: str | os.PathLike[str]) -> str | None:
    """Return the sha256 of ``path`` if this process hashed it and it has not changed since, else None."""
    try:
        return _HASHES.get(_hash_key(path))
    except OSError:
        return None


def remember_sha256(path: str | os.PathLike[str], digest: str) -> None:
    """Record the sha256 of ``path`` computed while it was written, so validation does not read it again.

    Only for a file that nothing changed between that hash and this call.
    """
    _HASHES[_hash_key(path)] = digest


def has_key(tree: Any, dotted: str) -> bool:
    """Tell whether ``tree`` has ``dotted``, a top-level key or a dotted path through nested dicts."""
    if not isinstance(tree, Mapping):
        return False
    for view in _views(tree):
        if dotted in view:
            return True
        for index, char in enumerate(dotted):
            if char == "." and isinstance(view.get(dotted[:index]), Mapping) and has_key(view[dotted[:index]], dotted[index + 1 :]):
                return True
    return False


def _views(tree: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # The dict as it is, plus its keys without a wrapper prefix carried by every key.
    found = keys.detect_key_prefix(key for key in tree if isinstance(key, str))
    if not found.prefix or found.mismatch or not all(isinstance(key, str) for key in tree):
        return [tree]
    return [tree, {key[len(found.prefix) :]: value for key, value in tree.items()}]


def manifest_for(folder: str, cache: dict[str, tuple[Manifest | None, str]]) -> tuple[Manifest | None, str]:
    """Read the manifest of ``folder`` once per scan; returns (manifest or None, problem)."""
    if folder not in cache:
        if not os.path.exists(os.path.join(folder, MANIFEST_NAME)):
            # A missing manifest costs one stat here. load_manifest would raise and catch FileNotFoundError.
            cache[folder] = (None, "")
            return cache[folder]
        try:
            cache[folder] = (load_manifest(folder), "")
        except ManifestError as exc:
            cache[folder] = (None, str(exc))
    return cache[folder]
