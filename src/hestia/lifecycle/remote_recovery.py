"""Recovery after a crash, for remote backends: what a killed Hestia started through Semaphore is
adopted again, or stopped.

Local processes are recovered by recovery.py from `<data_dir>/run/`. A remote backend leaves no
process here; what it leaves is its row in the journal (semaphore/journal.py), written at each
stage: start begun, start task created (and each status), start task succeeded, ready, stop
task created, stopped (row gone) or stop failed. For every row, `decide` says what to do:

- **a stop task was running**: wait for it to finish (`remote_backend_stop_awaited_after_restart`),
  then COLD. If it never got created, or failed, the stop template runs again.
- **a start task was running**: wait for it (`semaphore_task_followed`), within what is left of
  `task_timeout` since it was created; a failed one is cleaned up with the stop template.
  Then as for a running backend:
- **the backend runs** (the start task succeeded, ready, or an earlier stop failed): with
  `on_restart: adopt`, and when the row's placement is one of the backend's as configured now
  (machine, upstream, and the launcher's configuration fingerprint), its readiness probe is
  polled: for `ADOPT_PROBE_WINDOW` if it was READY, else for the placement's readiness timeout
  (it was still starting). If it answers, it is adopted READY, its idle timer running from now
  (`remote_backend_adopted_after_restart`). Otherwise — `on_restart: stop`, not ready in time —
  its stop template runs (`remote_backend_stopped_after_restart`, with the reason).
- **the configuration changed** (no placement has that fingerprint) or the backend is **no
  longer configured**: stopped with the stop template recorded in the row (after waiting for a
  running task, as above); with none recorded, or no `semaphore` section any more, nothing can
  be done but say so (`remote_backend_left_running`).

Where it runs. Waiting for a start task can take up to `task_timeout` (30 minutes by default),
far too long to keep the gateway from listening. So only the decision that needs no I/O (reading
the journal, matching placements) is taken before the server listens, in `resume_remote`; the
rest runs in each backend's own supervisor task (`Supervisor.resume`, lifecycle/resuming.py),
which shows STARTING (STOPPING while a stop is awaited), holds that backend's requests in its
queue, and refuses to start a second copy until the row is settled. Every other backend serves
at once. Rows of backends no longer configured are settled in tasks of their own
(`resume_remote` returns them; the gateway runs them beside the supervisors; their stops are
shielded, as every stop is).

A row whose writer still runs (two gateways on one `data_dir`) is left alone
(`remote_backend_in_use`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path

import structlog
import trio
from pydantic import ValidationError

from ..config import Config, SemaphoreLauncherConfig
from ..launchers.base import LaunchContext, Running
from ..launchers.registry import boot_id, fingerprint, is_alive
from ..launchers.semaphore import SemaphoreLauncher, TaskFailed
from ..semaphore.client import SemaphoreError
from ..semaphore.hub import SemaphoreHub
from ..semaphore.journal import FINISHED, RemoteJournal, RemoteRow
from ..semaphore.tasks import TemplateError
from .leases import State
from .placement import Placement
from .readiness import poll_until
from .recovery import ADOPT_PROBE_WINDOW
from .supervisor import Supervisor

__all__ = ["Decision", "decide", "resume_remote"]

log = structlog.get_logger("hestia.recovery")

SetState = Callable[[State], None]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one journal row."""

    follow: str | None   # "start" or "stop": a task still running, waited for first
    then: str            # "probe" (adopt if it answers, else stop), "stop", or "nothing"
    reason: str          # why, for the log


def decide(row: RemoteRow, adoptable: bool, why_not: str = "on_restart_stop") -> Decision:
    """The decision for `row` (see the module docstring). `adoptable`: the backend says
    `on_restart: adopt` and the row's placement is configured as it was; else `why_not`."""
    if row.stage == "stopping":
        if row.task_action == "stop" and row.task_unfinished:
            return Decision("stop", "nothing", "stop_task_running")
        if row.task_action == "stop" and row.task_status == "success":
            return Decision(None, "nothing", "stopped")
        return Decision(None, "stop", "stop_unfinished")
    then, reason = ("probe", "on_restart_adopt") if adoptable else ("stop", why_not)
    if row.task_action == "start" and row.task_unfinished:
        return Decision("start", then, reason)
    if row.stage == "starting" and row.task_action == "start" and row.task_status != "success":
        return Decision(None, "stop", "start_task_failed")  # its clean-up never ran
    return Decision(None, then, reason)


def resume_remote(config: Config, supervisors: dict[str, Supervisor],
                  journal: RemoteJournal, hub: SemaphoreHub | None,
                  ) -> list[Callable[[], Awaitable[None]]]:
    """Before the supervisors run: give each backend with journal rows its resumption, and
    return the settling of rows whose backend is no longer configured (for the caller to run
    in a nursery). Synchronous: no I/O but the journal's reads."""
    by_service: dict[str, list[RemoteRow]] = {}
    current_boot = boot_id()
    for row in journal.rows():
        if (row.owner_start_time is not None and row.owner_boot_id == current_boot
                and is_alive(row.owner_pid, row.owner_start_time)):
            log.warning("remote_backend_in_use", service=row.service, machine=row.machine,
                        owner_pid=row.owner_pid)
        elif hub is None:  # kept: a configuration with Semaphore again can still settle it
            _left_running(row, "semaphore_not_configured")
        elif row.semaphore_url != hub.client.base_url:
            # Its task ids and templates are another Semaphore's: kept, for a configuration
            # with that Semaphore again.
            _left_running(row, "semaphore_changed")
        else:
            by_service.setdefault(row.service, []).append(row)
    orphans: list[Callable[[], Awaitable[None]]] = []
    for service, rows in by_service.items():
        assert hub is not None
        supervisor = supervisors.get(service)
        if supervisor is None or supervisor.state is not State.COLD:
            # No longer configured; or its local process was adopted (recovery.py): stopped
            # in the background, the backend serving meanwhile.
            why = "not_configured" if supervisor is None else "another_placement_adopted"
            orphans += [partial(_settle, row, supervisor, hub, journal, config.data_dir,
                                lambda state: None, may_adopt=False, why=why) for row in rows]
            continue
        stopping = all(decide(r, False).follow == "stop" for r in rows)
        supervisor.resume(partial(_settle_all, rows, supervisor, hub, journal,
                                  config.data_dir),
                          State.STOPPING if stopping else State.STARTING)
    return orphans


async def _settle_all(rows: list[RemoteRow], supervisor: Supervisor, hub: SemaphoreHub,
                      journal: RemoteJournal, data_dir: Path,
                      set_state: SetState) -> tuple[Running, Placement] | None:
    """A backend's rows, one after the other; at most one is adopted (a backend runs on one
    placement at a time: others are left by failed attempts whose stop failed)."""
    adopted: tuple[Running, Placement] | None = None
    try:
        for row in rows:
            found = await _settle(row, supervisor, hub, journal, data_dir, set_state,
                                  may_adopt=adopted is None,
                                  why=None if adopted is None else "another_placement_adopted")
            adopted = adopted or found
    except BaseException:
        if adopted is not None:
            with trio.CancelScope(shield=True):
                await adopted[0].stop()
        raise
    return adopted


async def _settle(row: RemoteRow, supervisor: Supervisor | None, hub: SemaphoreHub,
                  journal: RemoteJournal, data_dir: Path, set_state: SetState, *,
                  may_adopt: bool, why: str | None = None) -> tuple[Running, Placement] | None:
    """Settle one row: the backend to adopt, or None. Never raises but a cancellation: a row
    that cannot be understood must not keep Hestia from serving (logged, and kept)."""
    try:
        return await _settle_row(row, supervisor, hub, journal, data_dir, set_state,
                                 may_adopt=may_adopt, why=why)
    except Exception as exc:
        log.exception("remote_recovery_failed", service=row.service, machine=row.machine,
                      stage=row.stage, detail=str(exc))
        return None


async def _settle_row(row: RemoteRow, supervisor: Supervisor | None, hub: SemaphoreHub,
                      journal: RemoteJournal, data_dir: Path, set_state: SetState, *,
                      may_adopt: bool, why: str | None) -> tuple[Running, Placement] | None:
    placement = _placement(row, supervisor) if supervisor is not None else None
    launcher = (placement.launcher if placement is not None
                else _recorded_launcher(row, hub, data_dir))
    why_not = why or ("not_configured" if supervisor is None else "configuration_changed"
                      if placement is None else "on_restart_stop")
    if not isinstance(launcher, SemaphoreLauncher):
        _left_running(row, "configuration_unreadable")
        journal.forget(row.service, row.machine)
        return None
    adoptable = (may_adopt and placement is not None and supervisor is not None
                 and supervisor.config.on_restart == "adopt")
    context = LaunchContext(row.service.partition("@")[0], row.backend, row.upstream, row.port,
                            row.machine)
    if row.stage == "starting" and row.task_id is None:
        row = await _unrecorded_task(row, launcher, context)
    decision = decide(row, adoptable, why_not)
    facts = {"service": row.service, "machine": row.machine, "stage": row.stage,
             "task_id": row.task_id}
    reason = decision.reason
    try:
        if decision.follow is not None:
            try:
                await launcher.follow_task(row.task_record(), context)
            except TaskFailed:
                reason = f"{decision.follow}_task_failed"
            if decision.follow == "stop":
                log.info("remote_backend_stop_awaited_after_restart", **facts,
                         stopped=reason == decision.reason)
                if reason != decision.reason:  # the stop failed: try it once more
                    return await _stop(launcher, row, journal, set_state, reason, facts)
                return None
        if decision.then == "nothing":
            journal.forget(row.service, row.machine)
            return None
        if decision.then == "probe" and reason == decision.reason:
            assert placement is not None
            window = (ADOPT_PROBE_WINDOW if row.stage in ("ready", "stop_failed")
                      else placement.readiness.timeout)
            if await _answers(placement, window):
                journal.stage(row.service, row.machine, "ready")
                log.info("remote_backend_adopted_after_restart", **facts,
                         upstream=row.upstream)
                return launcher.adopted(context), placement
            log.info("recovery_not_adopted", **facts, reason="not_ready",
                     last_probe=placement.probe.last_result)
            reason = "not_ready"
    except BaseException:
        if decision.follow != "stop":  # cancelled (a stop, the shutdown): stop what it found
            with trio.CancelScope(shield=True):
                await _stop(launcher, row, journal, set_state, "cancelled", facts)
        raise
    return await _stop(launcher, row, journal, set_state, reason, facts)


async def _stop(launcher: SemaphoreLauncher, row: RemoteRow, journal: RemoteJournal,
                set_state: SetState, reason: str, facts: dict[str, object]) -> None:
    if launcher.config.stop_template is None:
        _left_running(row, "no_stop_template")
        journal.forget(row.service, row.machine)
        return None
    set_state(State.STOPPING)
    context = LaunchContext(row.service.partition("@")[0], row.backend, row.upstream, row.port,
                            row.machine)
    # Shielded, like every stop: bounded by `task_timeout`, and half a stop is worse.
    with trio.CancelScope(shield=True):
        await launcher.adopted(context).stop()
    if journal.find(row.service, row.machine) is None:
        log.info("remote_backend_stopped_after_restart", **facts, reason=reason)
    else:
        log.warning("remote_backend_stop_failed_after_restart", **facts, reason=reason)
    return None


async def _unrecorded_task(row: RemoteRow, launcher: SemaphoreLauncher,
                           context: LaunchContext) -> RemoteRow:
    """`row` with the start task a killed Hestia created but did not live to record (killed
    between Semaphore's answer and the journal's write): the newest unfinished task of the start
    template whose `HESTIA_*` variables name this backend and machine. A task that finished
    cannot be told from an older start's; the probe and the stop template deal with it."""
    try:
        template_id = await launcher.templates.id_of(row.project, launcher.config.start_template)
        tasks = await launcher.client.template_tasks(row.project, template_id)
    except (SemaphoreError, TemplateError) as exc:
        log.warning("remote_task_lookup_failed", service=row.service, machine=row.machine,
                    detail=str(exc))
        return row
    wanted = {"HESTIA_SERVICE": context.service, "HESTIA_BACKEND": context.backend,
              "HESTIA_MACHINE": context.machine, "HESTIA_ACTION": "start"}
    # Without the HESTIA_* variables (`send_variables: configured` or `none`), the message
    # Hestia gives a task by default names the backend and machine as well.
    message = (None if launcher.config.message
               else f"hestia: start {context.service} on {context.machine}")
    for task in tasks:
        try:
            variables = json.loads(task.get("environment") or "{}")
        except ValueError:
            continue
        ours = (isinstance(variables, dict)
                and all(variables.get(k) == v for k, v in wanted.items())) or (
            message is not None and task.get("message") == message)
        if ours and task.get("status") not in FINISHED and isinstance(task.get("id"), int):
            log.info("remote_task_found", service=row.service, machine=row.machine,
                     task_id=task["id"], status=task.get("status"))
            # Its own creation time: the task_timeout left counts from it (a task Semaphore
            # forgot to end, CONTRACT §7, must not get a whole new one).
            return replace(row, task_id=task["id"], task_action="start",
                           task_status=str(task.get("status")), task_template_id=template_id,
                           task_template=str(launcher.config.start_template),
                           task_created_at=_created_at(task) or row.updated_at)
    return row


async def _answers(placement: Placement, window: float) -> bool:
    with trio.move_on_after(window):
        await poll_until(placement.probe.check, cap=0.25)
        return True
    return False


def _placement(row: RemoteRow, supervisor: Supervisor) -> Placement | None:
    """The backend's placement the row was started as, when configured as it was then: the
    same launcher settings and the same Semaphore project (`semaphore.project` may have given
    it, which the launcher's settings do not show)."""
    for placement in supervisor.placements:
        launcher = placement.launcher
        if (isinstance(launcher, SemaphoreLauncher)
                and (placement.machine, placement.upstream) == (row.machine, row.upstream)
                and fingerprint(launcher.config) == row.fingerprint
                and launcher.project == row.project):
            return placement
    return None


def _created_at(task: dict[str, object]) -> float | None:
    """A Semaphore task's `created` (RFC 3339) as POSIX seconds."""
    created = task.get("created")
    if not isinstance(created, str):
        return None
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _recorded_launcher(row: RemoteRow, hub: SemaphoreHub,
                       data_dir: Path) -> SemaphoreLauncher | None:
    """A launcher as the row's configuration was, to run its stop template."""
    try:
        config = SemaphoreLauncherConfig.model_validate_json(row.config)
    except ValidationError:
        return None
    return SemaphoreLauncher.from_hub(hub, row.service, config.model_copy(
        update={"project": row.project}), data_dir / "logs" / f"{row.service}.log")


def _left_running(row: RemoteRow, reason: str) -> None:
    log.warning("remote_backend_left_running", service=row.service, machine=row.machine,
                stage=row.stage, task_id=row.task_id, upstream=row.upstream, reason=reason,
                detail="Hestia cannot stop this remote backend; stop it by hand if it runs")
