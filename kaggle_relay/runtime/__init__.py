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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kaggle_relay.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
