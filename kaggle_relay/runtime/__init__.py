"""The in-kernel checkpoint runtime: standard library and torch only.

Import what you need from here in a training script or notebook cell::

    from kaggle_relay.runtime import find_best_checkpoint, save_checkpoint, SessionClock

Names are imported on first use, so metadata-only callers (``scan``,
``find_best_checkpoint``) never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "Candidate": "kaggle_relay.runtime.validate",
    "validate_checkpoint": "kaggle_relay.runtime.validate",
    "ScanResult": "kaggle_relay.runtime.select",
    "scan": "kaggle_relay.runtime.select",
    "find_best_checkpoint": "kaggle_relay.runtime.select",
    "find_latest_checkpoint": "kaggle_relay.runtime.select",
    "list_locations": "kaggle_relay.runtime.discover",
    "kaggle_root": "kaggle_relay.runtime.discover",
    "TrustPolicy": "kaggle_relay.runtime.trust",
    "strip_key_prefix": "kaggle_relay.runtime.keys",
    "print_report": "kaggle_relay.runtime.diagnose",
    "save_checkpoint": "kaggle_relay.runtime.save",
    "mark_done": "kaggle_relay.runtime.save",
    "export_compact": "kaggle_relay.runtime.compact",
    "compact_state": "kaggle_relay.runtime.compact",
    "prune_checkpoints": "kaggle_relay.runtime.prune",
    "KeepNewest": "kaggle_relay.runtime.prune",
    "KeepBest": "kaggle_relay.runtime.prune",
    "KeepNewestValid": "kaggle_relay.runtime.prune",
    "capture_training_state": "kaggle_relay.runtime.state",
    "restore_training_state": "kaggle_relay.runtime.state",
    "ResumeReport": "kaggle_relay.runtime.state",
    "load_checkpoint": "kaggle_relay.runtime.load",
    "make_writable_copy": "kaggle_relay.runtime.copy",
    "SessionClock": "kaggle_relay.runtime.clock",
    "check_accelerator": "kaggle_relay.runtime.device",
    "verify_handoff": "kaggle_relay.runtime.handoff",
    "start_session": "kaggle_relay.runtime.session",
    "Session": "kaggle_relay.runtime.session",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kaggle_relay.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
