"""The state machine of one chain: push, poll, harvest, publish, wait for READY, push again.

``advance(chain)`` moves a chain as far as it can without blocking for
hours, and returns. Its states are those of the ledger::

    idle ──push──▶ running ──harvest──▶ publishing ──create version──▶ waiting
      ▲               │ no newer checkpoint    ▲ version FAILED            │ READY, file list checked
      └───────────────┴────────────────────────┴───────────────────────────┘
    idle ──stop rule──▶ done          any state ──unrecoverable──▶ failed

The stop rules (``relay/stop.py``) run before every push, so they hold
even when a crash came between a handoff and the decision.

Every step is journalled in the ledger before and after it touches Kaggle.
After a crash inside a step, the next call finds out from Kaggle what
already happened instead of repeating it:

- inside ``push``: the latest kernel version's source carries the run id in
  the bundled preamble, so a push that went through is recognised and never
  repeated (a push may start a paid session, so it is never retried blindly);
- inside ``publish``: a dataset version whose notes carry the run id is the
  one this run created, so no second version is made. A version that ended
  FAILED is published again under a new marker (``ledger.publish_marker``),
  so the lookup never finds the failed one;
- inside ``poll``, ``harvest`` and ``ready``: these only read, so they run again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_relay.errors import (
    ConfigError,
    DatasetVersionFailedError,
    KaggleNotFoundError,
    KaggleRejectedError,
    KernelRunError,
    QuotaExceededError,
    WaitTimeoutError,
)
from kaggle_relay.relay import harvest as harvesting
from kaggle_relay.relay import quota as quotas
from kaggle_relay.relay import retry
from kaggle_relay.relay.bundle import SessionEnv, build_push_folder, bundled_run_id
from kaggle_relay.relay.config import ChainConfig, Quota
from kaggle_relay.relay.ledger import (
    TERMINAL_STATES,
    CheckpointInfo,
    DatasetPin,
    Handoff,
    Ledger,
    Run,
    Stopped,
    chain_lock,
    chain_log,
    list_chains,
    publish_marker,
    work_dir,
)
from kaggle_relay.relay.refs import DatasetRef, KernelRef
from kaggle_relay.relay.stop import StopDecision, decide_stop, trailing_failures
from kaggle_relay.runtime.manifest import utc_now

log = logging.getLogger(__name__)

#: Called with a step name at each point where a crash must be survivable: before each
#: step ("push", "poll", "harvest", "publish", "ready") and right after the two calls
#: that change Kaggle ("pushed", "published"). Tests raise from it to simulate a crash there.
Hook = Callable[[str], None]
HOOK_POINTS = ("push", "pushed", "poll", "harvest", "publish", "published", "ready")


@dataclass
class Outcome:
    """The result of one ``advance`` call: final state, blocking reason, progress messages and step timings."""

    chain: str
    state: str
    blocked: str = ""
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds spent in each step during this call (push, poll, harvest, publish, ready).

    A step that ran more than once (``wait`` polls) is summed. ``publish`` includes
    validating, staging, uploading, waiting for READY and checking the file list.
    """

    @property
    def needs_attention(self) -> bool:
        return self.state == "failed" or bool(self.blocked)


@dataclass
class Context:
    """Everything a step needs: the chain, its ledger, the API and the injectable clock."""

    chain: ChainConfig
    ledger: Ledger
    api: Any
    quota: Quota
    state_dir: Path
    hook: Hook
    sleep: Callable[[float], None] = time.sleep
    outcome: Outcome = field(init=False)

    def __post_init__(self) -> None:
        self.outcome = Outcome(chain=self.chain.name, state=self.ledger.state)

    @property
    def kernel(self) -> KernelRef:
        return KernelRef.parse(kernel_id(self.chain))

    @property
    def dataset(self) -> DatasetRef:
        return DatasetRef.parse(self.chain.dataset)

    def say(self, message: str, *args: Any) -> None:
        """Log a progress line and keep it for the command's summary."""
        text = message % args if args else message
        log.info("%s: %s", self.chain.name, text)
        self.outcome.messages.append(text)

    def step(self, name: str) -> None:
        self.hook(name)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall-clock time of the block to ``outcome.timings[name]``, also when it raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.outcome.timings[name] = self.outcome.timings.get(name, 0.0) + elapsed


def kernel_id(chain: ChainConfig) -> str:
    """Return the chain's kernel as ``owner/slug``, from its folder's metadata or its config."""
    if chain.kernel_is_folder:
        from kaggle_relay.relay.bundle import read_metadata

        return str(read_metadata(chain.kernel_folder)["id"])
    return chain.kernel


def advance(
    chain: ChainConfig,
    *,
    wait: bool = False,
    quota: Quota | None = None,
    api: Any = None,
    hook: Hook | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Advance ``chain`` as far as it can go now; with ``wait``, until it is done or blocked.

    Holds the chain's lock for the whole call (ChainLockedError if another
    process holds it) and copies the log to ``.relay/<chain>.log``. Every
    Kaggle call retries under the chain's ``retry`` policy when relay.toml sets one.
    """
    state_dir = chain.project_dir / ".relay"
    with chain_lock(state_dir, chain.name), chain_log(state_dir, chain.name):
        ledger = Ledger.open(state_dir, chain.name)
        if api is None:
            from kaggle_relay.relay import client

            api = client.connect(endpoint=chain.resolved_endpoint())
        context = Context(chain, ledger, api, quota or Quota(), state_dir, hook or (lambda _name: None), sleep)
        with retry.policy_scope(chain.retry):
            _drive(context, wait=wait)
        context.outcome.state = ledger.state
        return context.outcome


def _drive(context: Context, *, wait: bool) -> None:
    """Run steps until the chain must wait for Kaggle (and ``wait`` is off) or ends."""
    while context.ledger.state not in TERMINAL_STATES:
        moved = _step(context)
        if moved and context.ledger.data.error is not None and context.ledger.state != "failed":
            context.ledger.data.error = None
            context.ledger.save()
        if context.outcome.blocked:
            return
        if not moved:
            if not wait:
                return
            context.sleep(context.chain.wait.poll_seconds)


def _step(context: Context) -> bool:
    """Run the step for the current state; return False when only time can move it on."""
    state = context.ledger.state
    if state == "idle":
        return _push(context)
    if state == "running":
        return _poll(context)
    if state == "publishing":
        return _publish(context)
    if state == "waiting":
        return _wait_ready(context)
    return False


# --- idle: push ------------------------------------------------------------------------


def _push(context: Context) -> bool:
    ledger, chain = context.ledger, context.chain
    decision = decide_stop(chain, ledger.data)
    if decision is not None:
        _stop(context, decision)
        return True
    open_step = ledger.open_step()
    if open_step and open_step["step"] == "push":
        if _recover_push(context, open_step["run_id"]):
            return True
        run = ledger.current
        assert run is not None
    else:
        try:
            _check_quota(context)
        except QuotaExceededError as error:
            context.outcome.blocked = f"{error} ({error.hint})"
            ledger.warn(str(error), hint=error.hint)
            return False
        run = _unpushed_run(ledger) or _new_run(context)

    with context.timed("push"):
        folder = work_dir(context.state_dir, chain.name) / "runs" / run.run_id / "push"
        metadata = build_push_folder(
            _source_folder(context),
            folder,
            env=_session_env(context, run),
            handoff_dataset=chain.dataset,
            accelerator=chain.accelerator,
        )
        context.step("push")
        ledger.begin("push", run_id=run.run_id)
        result = _call_push(context, folder, metadata)
    context.step("pushed")
    run.kernel_version = result.ref.version
    run.kernel = context.kernel.id
    run.pushed_at = utc_now()
    run.status = "queued"
    ledger.data.state = "running"
    ledger.end("push", run_id=run.run_id, kernel_version=run.kernel_version)
    context.say("day %d: pushed %s version %s (%s)", run.day, run.kernel, run.kernel_version, _handoff_text(run))
    return True


def _unpushed_run(ledger: Ledger) -> Run | None:
    """Return the current run when no version of it reached Kaggle, so a retried push reuses its day."""
    run = ledger.current
    if run is not None and run.kernel_version is None:
        return run
    return None


def _call_push(context: Context, folder: Path, metadata: dict[str, Any]) -> Any:
    from kaggle_relay.relay import kernels

    chain = context.chain
    try:
        return kernels.push_kernel(
            context.api,
            folder,
            dataset_sources=list(metadata.get("dataset_sources", [])),
            machine_shape=None if chain.accelerator == "none" else chain.accelerator,
            timeout_seconds=chain.session_timeout,
        )
    except (KaggleRejectedError, KernelRunError, ConfigError) as error:
        # Nothing was pushed (Kaggle refused, a version still runs, or the metadata is invalid), so the
        # step is closed and the next tick does not look for an interrupted push.
        run_id = context.ledger.current.run_id if context.ledger.current else ""
        context.ledger.end("push", run_id=run_id, error=str(error))
        if isinstance(error, ConfigError):
            raise _about_source(error, folder, _source_folder(context)) from error
        raise


def _about_source(error: ConfigError, staged: Path, source: Path) -> ConfigError:
    """Point an error about the staged copy under ``.relay/`` at the project's own file, the one to edit."""
    if not error.path or not Path(error.path).is_relative_to(staged):
        return error
    original = source / Path(error.path).relative_to(staged)
    message = str(error).replace(error.path, str(original))
    return ConfigError(message, path=str(original), field=error.field, hint=error.hint)


def _new_run(context: Context) -> Run:
    """Append a run for the next day to the ledger and save it."""
    ledger, chain = context.ledger, context.chain
    day = ledger.days + 1
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    handoff = ledger.data.handoff
    run = Run(
        day=day,
        run_id=f"{chain.name}-d{day:03d}-{stamp}-{uuid.uuid4().hex[:4]}",
        handoff_in=DatasetPin(dataset=handoff.dataset, version=handoff.version) if handoff else None,
        accelerator=chain.accelerator,
        session_limit=chain.session_limit,
    )
    ledger.runs.append(run)
    ledger.save()
    return run


def _session_env(context: Context, run: Run) -> SessionEnv:
    handoff = context.ledger.data.handoff
    identity = None
    if handoff is not None:
        identity = {"dataset": handoff.dataset, "version": handoff.version, "run_id": handoff.run_id}
    return SessionEnv(
        run_id=run.run_id,
        handoff=identity,
        accelerator=context.chain.accelerator,
        session_limit=context.chain.session_timeout,
    )


def _source_folder(context: Context) -> Path:
    """Return the folder holding the code to push; a kernel given as a slug is pulled once."""
    chain = context.chain
    if chain.kernel_is_folder:
        return chain.kernel_folder
    folder = work_dir(context.state_dir, chain.name) / "source"
    if not (folder / "kernel-metadata.json").is_file():
        retry.run("read", "pull kernel", context.api.kernels_pull, chain.kernel, str(folder), metadata=True,
                  resource=chain.kernel)
    return folder


def _recover_push(context: Context, run_id: str) -> bool:
    """Find out whether the interrupted push of ``run_id`` reached Kaggle; record it if so."""
    version = find_pushed_version(context.api, context.kernel, run_id)
    run = context.ledger.current
    assert run is not None and run.run_id == run_id
    if version is None:
        context.say("the interrupted push of %s did not reach Kaggle; pushing it now", run_id)
        return False
    run.kernel_version = version
    run.kernel = context.kernel.id
    run.pushed_at = run.pushed_at or utc_now()
    run.status = "queued"
    context.ledger.data.state = "running"
    context.ledger.end("push", run_id=run_id, kernel_version=version, recovered=True)
    context.say("the interrupted push of %s had reached Kaggle as version %d; not pushing again", run_id, version)
    return True


def find_pushed_version(api: Any, kernel: KernelRef, run_id: str) -> int | None:
    """Return the kernel version whose bundled code carries ``run_id``, or None.

    Reads the latest version of the kernel (GetKernel): a push of this run
    can only be the latest one, because the relay never pushes while a
    version of the chain is queued or running.
    """
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

    def get_latest() -> Any:
        request = ApiGetKernelRequest()
        request.user_name = kernel.owner
        request.kernel_slug = kernel.slug
        with api.build_kaggle_client() as kaggle:
            return kaggle.kernels.kernels_api_client.get_kernel(request)

    try:
        response = retry.run("read", "get kernel", get_latest, resource=kernel.id)
    except KaggleNotFoundError:
        return None
    if bundled_run_id(response.blob.source or "") != run_id:
        return None
    return int(response.metadata.current_version_number)


def _check_quota(context: Context) -> None:
    runs: list[Run] = []
    for name in list_chains(context.state_dir):
        if name == context.chain.name:
            runs.extend(context.ledger.runs)
        else:
            runs.extend(Ledger.open(context.state_dir, name).runs)
    quotas.check_quota(runs, context.quota, context.chain)


def _handoff_text(run: Run) -> str:
    if run.handoff_in is None:
        return "fresh start, no handoff yet"
    return f"resuming from {run.handoff_in.dataset}/{run.handoff_in.version}"


# --- running: poll and harvest ------------------------------------------------------------


def _poll(context: Context) -> bool:
    from kaggle_relay.relay import kernels

    run = context.ledger.current
    assert run is not None and run.kernel_version is not None
    if not run.finished_at:
        context.step("poll")
        with context.timed("poll"):
            state = kernels.kernel_status(context.api, context.kernel.with_version(run.kernel_version))
        if not state.status.is_terminal:
            if run.status != state.status.value:
                run.status = state.status.value
                context.ledger.save()
            return False
        run.status = state.status.value
        run.failure_message = state.failure_message
        run.finished_at = utc_now()
        charged = quotas.charge(run)
        run.seconds = charged.seconds if charged else 0.0
        context.ledger.end("poll", run_id=run.run_id, status=run.status)
        context.say("day %d: version %d ended %s", run.day, run.kernel_version, run.status)

    context.step("harvest")
    context.ledger.begin("harvest", run_id=run.run_id)
    with context.timed("harvest"):
        found = harvesting.harvest(context, run)
    context.ledger.end("harvest", run_id=run.run_id, outcome=run.outcome)
    _after_harvest(context, run, found)
    return True


def _after_harvest(context: Context, run: Run, found: CheckpointInfo | None) -> None:
    ledger, rules = context.ledger, context.chain.stop
    if ledger.state == "failed":
        return  # the harvest found a session that trained from scratch and failed the chain
    if found is not None:
        run.checkpoint = found
        ledger.set_state("publishing")
        return
    failed = trailing_failures(ledger.runs)
    if failed > rules.max_failed_runs:
        ledger.fail(
            f"{failed} session(s) in a row ended without a newer valid checkpoint (last: version "
            f"{run.kernel_version} {run.status}{': ' + run.failure_message if run.failure_message else ''})",
            hint=f"read the session log in .relay/{context.chain.name}/runs/{run.run_id}/download/, fix the "
            "training script, then run `kaggle-relay next-day --retry`",
            run_id=run.run_id,
        )
        return
    context.say("day %d left no newer valid checkpoint; the next session resumes from the last handoff", run.day)
    ledger.set_state("idle")


# --- publishing and waiting -------------------------------------------------------------


def _publish(context: Context) -> bool:
    from kaggle_relay.relay import datasets

    ledger = context.ledger
    run = ledger.current
    assert run is not None and run.checkpoint is not None
    marker = publish_marker(run)
    open_step = ledger.open_step()
    if open_step and open_step["step"] == "publish":
        found = datasets.find_version_by_notes(context.api, context.dataset, marker)
        if found is not None and found.status is datasets.DatasetStatus.FAILED:
            _after_failed_version(context, run, found.number)
            return True
        if found is not None:
            context.say("the interrupted publish of %s had created version %d; not publishing again", marker, found.number)
            _record_published(context, run, found.number)
            return True

    context.step("publish")
    ledger.begin("publish", run_id=run.run_id, marker=marker)
    try:
        with context.timed("publish"):
            result = _publish_checkpoint(context, run, marker)
    except WaitTimeoutError:
        # The version exists but is still processing; the next tick finds it by its notes.
        found = datasets.find_version_by_notes(context.api, context.dataset, marker)
        if found is None:
            raise
        _record_published(context, run, found.number)
        return False
    except DatasetVersionFailedError as error:
        _after_failed_version(context, run, error.version)
        return True
    context.step("published")
    version = result.dataset.version
    assert version is not None
    _record_published(context, run, version)
    _finish_handoff(context, run, verified=True)
    return True


def _publish_checkpoint(context: Context, run: Run, marker: str) -> Any:
    from kaggle_relay.relay import publish

    chain = context.chain
    assert run.checkpoint is not None
    last = context.ledger.data.handoff
    last_step = last.checkpoint.step if last and last.checkpoint else None
    # The newest valid checkpoint is handed over, not the best by metric: the next session must
    # resume from the exact state this one stopped in, and an older best would repeat epochs. The
    # metric is still recorded per run, kept as the chain's best and used by the target stop rule.
    return publish.publish_checkpoints(
        context.api,
        harvesting.output_folder(context, run),
        context.dataset,
        patterns=chain.patterns,
        require_keys=chain.require_keys,
        metric=None,
        mode=None,
        carry=chain.carry,
        run_id=marker,
        handoff_note=f"kaggle-relay {chain.name} day {run.day}: {run.checkpoint.file}",
        min_step=(last_step + 1) if last_step is not None else None,
        timeout=chain.wait.dataset_ready_seconds,
        title=chain.dataset_title,
    )


def _after_failed_version(context: Context, run: Run, version: int | None) -> None:
    """Publish again under a new marker after a FAILED version, or fail the chain when no attempt is left."""
    ledger = context.ledger
    run.failed_versions.append(version or 0)
    run.publish_attempts_left -= 1
    run.published = None
    ledger.end("publish", run_id=run.run_id, error=f"version {version} ended FAILED")
    failed = ", ".join(str(number) for number in run.failed_versions)
    if run.publish_attempts_left <= 0:
        ledger.fail(
            f"dataset {context.dataset.id}: version(s) {failed} of day {run.day}'s handoff ended FAILED",
            hint="check the dataset's versions on Kaggle, then run `kaggle-relay next-day --retry` to publish again",
            run_id=run.run_id,
        )
        return
    ledger.warn(
        f"dataset {context.dataset.id} version {version} ended FAILED; publishing day {run.day}'s checkpoint again",
        hint="nothing to do unless it keeps failing", run_id=run.run_id,
    )
    ledger.set_state("publishing")


def _record_published(context: Context, run: Run, version: int) -> None:
    run.published = DatasetPin(dataset=context.dataset.id, version=version)
    context.ledger.data.state = "waiting"
    context.ledger.end("publish", run_id=run.run_id, dataset_version=version)
    context.say("day %d: published %s version %d", run.day, context.dataset.id, version)


def _wait_ready(context: Context) -> bool:
    """Wait (bounded) for the published version, check its file list, then hand it over."""
    from kaggle_relay.relay import datasets

    run = context.ledger.current
    assert run is not None and run.published is not None
    ref = context.dataset.with_version(run.published.version)
    context.step("ready")
    try:
        with context.timed("ready"):
            datasets.wait_for_ready(
                context.api, ref, timeout=context.chain.wait.dataset_ready_seconds,
                interval=min(10.0, context.chain.wait.poll_seconds), sleep=context.sleep,
            )
    except WaitTimeoutError:
        context.say("dataset %s is still processing", ref)
        return False
    except DatasetVersionFailedError as error:
        _after_failed_version(context, run, error.version)
        return True
    with context.timed("ready"):
        harvesting.verify_published(context, run, ref)
    _finish_handoff(context, run, verified=True)
    return True


def _finish_handoff(context: Context, run: Run, *, verified: bool) -> None:
    """Make the published version the handoff of the next push; the stop rules run before that push."""
    ledger = context.ledger
    assert run.published is not None and verified
    ledger.data.handoff = Handoff(
        dataset=run.published.dataset, version=run.published.version, run_id=publish_marker(run),
        checkpoint=run.checkpoint,
    )
    best = ledger.data.best
    if best is not None and best.run_id == run.run_id and run.checkpoint and best.checkpoint.file == run.checkpoint.file:
        best.dataset_version = run.published.version
    ledger.data.state = "idle"
    ledger.end("ready", run_id=run.run_id, dataset_version=run.published.version)


def _stop(context: Context, decision: StopDecision) -> None:
    run = context.ledger.current
    context.ledger.data.state = "done"
    context.ledger.data.stopped = Stopped(rule=decision.rule, reason=decision.reason, time=utc_now())
    context.ledger.end("stop", run_id=run.run_id if run else "", rule=decision.rule, reason=decision.reason)
    if decision.finished:
        context.say("done: %s", decision.reason)
    else:
        context.say("stopped by %s before training finished: %s", decision.rule, decision.reason)


def retry_failed(chain: ChainConfig) -> bool:
    """Put a failed chain back to ``idle`` (or ``publishing`` when its last checkpoint was never handed over).

    A chain that a stop rule of relay.toml ended before training finished goes back to ``idle`` too,
    and the rules run again before its next push, so a raised limit lets it go on.
    Returns whether the chain was put back.
    """
    state_dir = chain.project_dir / ".relay"
    with chain_lock(state_dir, chain.name):
        ledger = Ledger.open(state_dir, chain.name)
        stopped = ledger.data.stopped
        if ledger.state == "done" and stopped is not None and stopped.rule != "done_flag":
            ledger.data.stopped = None
            ledger.data.state = "idle"
            ledger.end("retry", after_stop=stopped.rule)
            return True
        if ledger.state != "failed":
            return False
        for run in ledger.runs:
            if run.outcome == "no_checkpoint":
                run.outcome = "no_checkpoint_before_retry"
        ledger.data.error = None
        ledger.data.state = "idle"
        current = ledger.current
        if current is not None and current.checkpoint is not None and current.published is None:
            # Its harvested checkpoint was never handed over (its versions FAILED): publish it again.
            current.publish_attempts_left = 3
            ledger.data.state = "publishing"
        ledger.end("retry")
        return True

