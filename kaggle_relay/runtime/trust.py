"""How much of a checkpoint's pickle to trust, per source.

Levels:

- ``weights_only`` (the default everywhere): only what
  ``torch.load(weights_only=True)`` accepts.
- ``globals``: also the globals named in the policy's ``globals`` list.
- ``full``: any global, as ``torch.load(weights_only=False)`` would load, which
  runs code from the file. The user opts in by source or by dataset name.

Datasets under /kaggle/input can be anyone's, so the ``input_dataset`` source
stays ``weights_only`` whatever ``sources`` sets. A dataset is trusted only
when it is named in ``datasets``. The user's own ``working`` folder and
``notebook_output`` may opt in by source.

Whatever the level, globals that run commands or code (``os``, ``subprocess``,
``builtins.eval`` and the like, see ``NEVER_TRUSTED``) are rejected: a
checkpoint never needs them.

Example::

    policy = TrustPolicy(
        sources={"working": "globals"},
        globals=["numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"],
        datasets={"alice/pretrained-ckpt": "full"},
    )
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kaggle_relay.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHTS_ONLY = "weights_only"
GLOBALS = "globals"
FULL = "full"
LEVELS = (WEIGHTS_ONLY, GLOBALS, FULL)

WORKING = "working"
INPUT_DATASET = "input_dataset"
NOTEBOOK_OUTPUT = "notebook_output"
SOURCES = (WORKING, INPUT_DATASET, NOTEBOOK_OUTPUT)

# Modules and builtins that run commands or code. torch blocks the first four even when allowlisted.
NEVER_TRUSTED_MODULES = frozenset(
    {"sys", "os", "posix", "nt", "subprocess", "shutil", "socket", "runpy", "pty", "ctypes",
     "importlib", "pickle", "_pickle", "marshal", "code", "codeop", "webbrowser", "multiprocessing"}
)  # fmt: skip
NEVER_TRUSTED_BUILTINS = frozenset(
    {"eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "open",
     "input", "breakpoint", "globals", "locals", "vars"}
)  # fmt: skip


def never_trusted(name: str) -> bool:
    """Tell whether a global runs commands or code, so that no policy may allow it."""
    module, _, attribute = name.rpartition(".")
    if module == "builtins":
        return attribute in NEVER_TRUSTED_BUILTINS
    return module.split(".")[0] in NEVER_TRUSTED_MODULES


@dataclass(frozen=True)
class TrustDecision:
    """The trust level for one candidate and the setting that chose it."""

    level: str = WEIGHTS_ONLY
    allowed_globals: frozenset[str] = frozenset()
    rule: str = "default"

    def allows(self, name: str) -> bool:
        """Tell whether this decision lets the global ``name`` load."""
        if never_trusted(name):
            return False
        if self.level == FULL:
            return True
        return self.level == GLOBALS and name in self.allowed_globals

    def rejected(self, blocked: Iterable[str]) -> list[str]:
        """Return the globals of ``blocked`` that this decision still rejects."""
        return [name for name in blocked if not self.allows(name)]


@dataclass
class TrustPolicy:
    """Trust levels by source kind and by dataset name; see the module docstring."""

    sources: Mapping[str, str] = field(default_factory=dict)
    datasets: Mapping[str, str] = field(default_factory=dict)
    globals: Iterable[str] = ()

    def __post_init__(self) -> None:
        for source, level in self.sources.items():
            _check_level(level, f"sources[{source!r}]")
            if source not in SOURCES:
                raise ConfigError(f"unknown source {source!r} in the trust policy; use one of {', '.join(SOURCES)}", field="trust")
        for name, level in self.datasets.items():
            _check_level(level, f"datasets[{name!r}]")
        self.globals = frozenset(self.globals)
        if self.sources.get(INPUT_DATASET, WEIGHTS_ONLY) != WEIGHTS_ONLY:
            log.warning(
                "trust level %r for every input dataset is ignored: name each dataset you trust "
                "in datasets={'owner/slug': level}",
                self.sources[INPUT_DATASET],
            )

    def decide(self, source: str, dataset: str = "") -> TrustDecision:
        """Return the trust level for a file from ``source`` (and from input ``dataset``, "owner/slug" or "slug")."""
        allowed = frozenset(self.globals)
        named = self._dataset_rule(dataset) if dataset else None
        if named is not None:
            rule, level = named
            return TrustDecision(level, allowed, f"datasets[{rule!r}]")
        if source == INPUT_DATASET:
            return TrustDecision(WEIGHTS_ONLY, frozenset(), "input datasets stay weights_only unless named")
        level = self.sources.get(source, WEIGHTS_ONLY)
        rule = f"sources[{source!r}]" if source in self.sources else "default"
        return TrustDecision(level, allowed, rule)

    def for_candidate(self, candidate: Any) -> TrustDecision:
        """Return the trust level for a ``Candidate`` (uses its ``source`` and ``dataset``)."""
        return self.decide(candidate.source, getattr(candidate, "dataset", ""))

    def _dataset_rule(self, dataset: str) -> tuple[str, str] | None:
        # "owner/slug" matches that owner only; a bare "slug" matches that slug from any owner.
        if dataset in self.datasets:
            return dataset, self.datasets[dataset]
        slug = dataset.rpartition("/")[2]
        if slug in self.datasets:
            return slug, self.datasets[slug]
        return None


def _check_level(level: str, where: str) -> None:
    if level not in LEVELS:
        raise ConfigError(f"invalid trust level {level!r} for {where}; use one of {', '.join(LEVELS)}", field="trust")


def opt_out_hint(source: str, dataset: str, names: Iterable[str]) -> str:
    """Return the policy setting that would let these globals load, or why none can."""
    names = list(names)
    dangerous = [name for name in names if never_trusted(name)]
    if dangerous:
        return f"{', '.join(dangerous)} run commands or code, so no trust policy allows them; do not load this file"
    listed = ", ".join(repr(name) for name in names)
    if source == INPUT_DATASET or (source == NOTEBOOK_OUTPUT and dataset):
        where = f"datasets={{{dataset or 'owner/slug'!r}: 'globals'}}"
    else:
        where = f"sources={{{source!r}: 'globals'}}"
    return f"if you trust this file, pass trust=TrustPolicy({where}, globals=[{listed}])"


def describe_importable(name: str) -> str:
    """Say whether the global ``module.attribute`` can be imported now, without importing anything.

    A module already imported is inspected; any other module is only located
    on the import path, so its attribute is not checked.
    """
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name, attributes = ".".join(parts[:cut]), parts[cut:]
        module = sys.modules.get(module_name)
        if module is not None:
            if _has_attributes(module, attributes):
                return "importable"
            if module_name == "__main__":
                return (
                    f"not importable: {'.'.join(attributes)} was defined in the __main__ of the "
                    "script or notebook that saved the file; define or import it before loading"
                )
            continue
        if _module_on_path(module_name):
            return "importable: module found, not imported"
    return f"not importable: no module found for {name}"


def _has_attributes(value: Any, attributes: list[str]) -> bool:
    for attribute in attributes:
        try:
            value = getattr(value, attribute)
        except AttributeError:
            return False
    return True


def _module_on_path(module_name: str) -> bool:
    # importlib.util.find_spec("a.b") imports "a"; walking the search path by hand does not.
    top, *rest = module_name.split(".")
    try:
        spec = importlib.util.find_spec(top) if top not in sys.modules else sys.modules[top].__spec__
    except (ImportError, ValueError):
        return False
    name = top
    for part in rest:
        locations = spec.submodule_search_locations if spec is not None else None
        if not locations:
            return False
        name = f"{name}.{part}"
        spec = importlib.machinery.PathFinder.find_spec(name, list(locations))
    return spec is not None
