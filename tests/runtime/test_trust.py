"""The trust policy per source and the importability report."""

from __future__ import annotations

import sys

import pytest

from kaggle_relay.errors import ConfigError
from kaggle_relay.runtime.trust import TrustPolicy, describe_importable, never_trusted, opt_out_hint


def test_default_policy_is_weights_only_everywhere() -> None:
    policy = TrustPolicy()
    for source in ("working", "input_dataset", "notebook_output"):
        decision = policy.decide(source)
        assert decision.level == "weights_only"
        assert decision.rejected(["numpy.ndarray"]) == ["numpy.ndarray"]


def test_working_may_opt_in_to_named_globals() -> None:
    policy = TrustPolicy(sources={"working": "globals"}, globals=["numpy.ndarray"])
    decision = policy.decide("working")
    assert decision.level == "globals"
    assert decision.rejected(["numpy.ndarray", "numpy.dtype"]) == ["numpy.dtype"]


def test_notebook_output_may_opt_in_fully() -> None:
    decision = TrustPolicy(sources={"notebook_output": "full"}).decide("notebook_output", "alice/train")
    assert decision.rejected(["__main__.Net"]) == []


def test_input_dataset_needs_its_name() -> None:
    policy = TrustPolicy(sources={"input_dataset": "full"}, datasets={"alice/ckpt": "full", "shared": "globals"})
    assert policy.decide("input_dataset", "eve/other").level == "weights_only"
    assert policy.decide("input_dataset", "alice/ckpt").level == "full"
    assert policy.decide("input_dataset", "bob/ckpt").level == "weights_only"
    assert policy.decide("input_dataset", "bob/shared").level == "globals"


def test_commands_are_never_trusted() -> None:
    decision = TrustPolicy(sources={"working": "full"}).decide("working")
    assert decision.rejected(["posix.system", "builtins.eval", "builtins.set"]) == ["posix.system", "builtins.eval"]
    assert never_trusted("subprocess.Popen")
    assert not never_trusted("numpy.ndarray")
    assert "no trust policy allows them" in opt_out_hint("working", "", ["os.system"])


def test_invalid_level_raises() -> None:
    with pytest.raises(ConfigError):
        TrustPolicy(sources={"working": "yes"})
    with pytest.raises(ConfigError):
        TrustPolicy(sources={"laptop": "full"})


def test_importable_report_never_imports() -> None:
    assert describe_importable("collections.OrderedDict") == "importable"
    assert describe_importable("__main__.NoSuchClass").startswith("not importable")
    assert describe_importable("no_such_module_xyz.Thing").startswith("not importable")
    assert "json.decoder" not in sys.modules or describe_importable("json.decoder.JSONDecoder") == "importable"
    before = set(sys.modules)
    assert describe_importable("email.mime.text.MIMEText").startswith("importable")
    assert "email.mime.text" not in set(sys.modules) - before
