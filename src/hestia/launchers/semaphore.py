"""The `semaphore` launcher: start and stop a backend by running Ansible Semaphore task templates.

A start creates a task from `start_template` and polls it every `poll_interval`:

- `success`: the playbook ran. The backend is not ready because of that (the service may still
  be loading), so `start` returns and the supervisor probes readiness as for any launcher.
- `error` or `stopped`: the attempt fails with the task's last output lines. Retries, backoff
  and fallback placements are the supervisor's startup policy, unchanged.
- `waiting_confirmation` (a Terraform plan): confirmed when `confirm: true`; otherwise the task
  is rejected (or, where Semaphore has no `/reject`, stopped with `force: true`: a plain stop
  leaves it `stopping` for ever in 2.10) and the attempt fails saying so. `rejected` is a
  finished status like `stopped`.
- still not finished after `task_timeout` (a task can stay `running` forever when Semaphore
  restarts under it, CONTRACT §7): Hestia asks Semaphore to stop it and fails the attempt.

After a start task fails, times out or is cancelled, the stop template runs (when there is
one), so a half-provisioned machine does not keep costing money; stop playbooks must therefore
cope with a half-done start. A stop runs the stop template and waits for it; a failed stop is
logged (`semaphore_stop_failed`) and shows in the backend's `automation` status.

Before each task the template is read by id and checked against what its Semaphore release
would do with the task (`semaphore.releases`): a `limit` it would drop, variables it would
refuse. Such a task is not sent, and the attempt fails saying what to change.

A remote backend cannot be watched from here: `wait` never returns, and crashes are for health
checks to find. Each task's output is appended to the backend's log file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from ..config import SemaphoreConfig, SemaphoreLauncherConfig
from ..errors import StartFailed
from ..private_files import open_private
from ..semaphore import releases
from ..semaphore.client import SemaphoreClient, SemaphoreError
from ..semaphore.journal import BackendJournal
from ..semaphore.tasks import Automation, TaskRecord, TemplateError, Templates
from .base import LaunchContext, Launcher, StopOnce
from .process import read_tail, rotate_log
from .registry import fingerprint

if TYPE_CHECKING:
    from ..semaphore.hub import SemaphoreHub

__all__ = ["SemaphoreLauncher", "SemaphoreRunning"]

log = structlog.get_logger("hestia.semaphore")

FINISHED = ("success", "error", "stopped", "rejected")  # `rejected`: 2.13 and later
OUTPUT_LINES = 20
# Polls may fail for a while (Semaphore restarting) before the attempt is given up as lost.
LOST_CONTACT_S = 30.0
# Asking Semaphore to stop a task on the way out of a cancelled start: bounded, shielded.
CANCEL_STOP_S = 10.0


class TaskFailed(Exception):
    """A task did not succeed; `detail` is for people, `extra` for the start failure."""

    def __init__(self, detail: str, reason: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason
        self.extra = extra


class SemaphoreLauncher(Launcher):
    """Runs `config.start_template` / `config.stop_template` in Semaphore project `project`."""

    kind = "semaphore"
    # The supervisor's readiness timeout starts once the task succeeded: a playbook that
    # provisions a machine is bounded by `task_timeout` instead.
    times_its_start = True

    def __init__(self, config: SemaphoreLauncherConfig, settings: SemaphoreConfig,
                 client: SemaphoreClient, templates: Templates, automation: Automation, *,
                 project: int, log_path: Path) -> None:
        self.config = config
        self.settings = settings
        self.client = client
        self.templates = templates
        self.automation = automation
        self.project = project
        self.log_path = log_path
        self.task_timeout = config.task_timeout or settings.task_timeout
        # Where each start and task is written down for the next Hestia (semaphore/journal.py).
        self.journal: BackendJournal | None = None

    @classmethod
    def from_hub(cls, hub: SemaphoreHub, service: str, config: SemaphoreLauncherConfig,
                 log_path: Path) -> SemaphoreLauncher:
        """A launcher of `service` on the gateway's connection to Semaphore."""
        settings = hub.config.semaphore
        assert settings is not None
        launcher = cls(config, settings, hub.client, hub.templates, hub.automation(service),
                       project=hub.config.project_of(config), log_path=log_path)
        launcher.journal = hub.journal.of(service)
        return launcher

    def __repr__(self) -> str:
        return (f"<SemaphoreLauncher project={self.project} "
                f"start={self.config.start_template!r} stop={self.config.stop_template!r}>")

    async def start(self, context: LaunchContext) -> SemaphoreRunning:
        """Run the start template until it succeeds. Raises `StartFailed` (with `task_id`,
        `task_status` and the output's last lines as `log_tail` when a task ran)."""
        rotate_log(self.log_path)
        offset = self._log_size()
        self._journal_begin(context)
        try:
            await self.run_task("start", self.config.start_template, context)
        except TaskFailed as exc:
            await self._clean_up(context)
            raise StartFailed(exc.detail, service=context.service, reason=exc.reason,
                              **exc.extra) from None
        except BaseException:  # cancelled: a stop, or the gateway shutting down
            with trio.CancelScope(shield=True):
                await self._clean_up(context)
            raise
        return SemaphoreRunning(self, context, offset)

    async def _clean_up(self, context: LaunchContext) -> None:
        if self.config.stop_template is None:
            return
        try:
            await self.run_task("stop", self.config.stop_template, context)
        except TaskFailed as exc:
            log.warning("semaphore_stop_failed", service=context.service, detail=exc.detail)

    async def run_task(self, action: str, ref: int | str, context: LaunchContext) -> TaskRecord:
        """Create a task from template `ref` and wait until it succeeds. Raises `TaskFailed`;
        on cancellation the task is asked to stop before the cancellation goes on."""
        record = TaskRecord(action, self.project, ref if isinstance(ref, int) else None,
                            str(ref), context.machine)
        self.automation.begin(record)
        try:
            await self._run(record, ref, context)
        except TaskFailed as exc:
            self.automation.finish(record, error=exc.detail)
            log.warning("semaphore_task_failed", service=context.service, action=action,
                        task_id=record.task_id, status=record.status, detail=exc.detail)
            raise
        except BaseException:
            if record.task_id is not None and record.status not in FINISHED:
                with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_STOP_S):
                    await self._stop_task(record, context)
            self.automation.finish(record, error="cancelled")
            raise
        self.automation.finish(record)
        log.info("semaphore_task_succeeded", service=context.service, action=action,
                 task_id=record.task_id, template_id=record.template_id,
                 duration_ms=record.as_dict()["duration_ms"])
        return record

    async def _run(self, record: TaskRecord, ref: int | str, context: LaunchContext) -> None:
        what = f"Semaphore {record.action} task"
        try:
            record.template_id = await self.templates.id_of(self.project, ref)
            template = await self.templates.get(self.project, record.template_id)
            title = self.templates.title(self.project, record.template_id)
            if title is not None:
                record.template = title
            variables = releases.variables(self.config, context.environment(record.action))
            refused = releases.problems(template, self.config, variables)
            if refused:
                record.status = "not_created"
                raise TaskFailed(refused[0].message, refused[0].reason)
            task = await self.client.create_task(self.project,
                                                 self._body(record, context, variables))
        except TemplateError as exc:
            record.status = "not_created"
            raise TaskFailed(str(exc), "unknown_template") from None
        except SemaphoreError as exc:
            record.status = "not_created"
            raise TaskFailed(f"cannot create the {what}: {exc.message}",
                             f"semaphore_{exc.reason}") from None
        record.task_id = int(task["id"])
        record.status = str(task.get("status", "waiting"))
        self._log_line(f"--- hestia: {what} {record.task_id} ({record.template}) created")
        log.info("semaphore_task_created", service=context.service, action=record.action,
                 task_id=record.task_id, template_id=record.template_id,
                 machine=context.machine)
        self.automation.changed(record)
        with trio.move_on_after(self.task_timeout) as deadline:
            await self._poll(record, context)
        if deadline.cancelled_caught:
            await self._stop_task(record, context)
            raise TaskFailed(
                f"{what} {record.task_id} ({record.template}) did not finish within "
                f"{self.task_timeout:g}s (status {record.status}); Hestia asked Semaphore to "
                "stop it", "task_timeout", task_id=record.task_id, task_status=record.status,
                log_tail=await self._output(record))
        lines = await self._output(record)
        self._log_lines(record, lines)
        if record.status != "success":
            last = next((line for line in reversed(lines) if line.strip()), "no output")
            hint = releases.terraform_hint(template, self.config) \
                if record.status == "error" else ""
            raise TaskFailed(f"{what} {record.task_id} ({record.template}) ended "
                             f"{record.status}: {last}{hint}", f"task_{record.status}",
                             task_id=record.task_id, task_status=record.status,
                             log_tail=lines)

    async def _poll(self, record: TaskRecord, context: LaunchContext) -> None:
        assert record.task_id is not None
        failing_since: float | None = None
        confirmed = False
        while record.status not in FINISHED:
            await trio.sleep(self.settings.poll_interval)
            try:
                task = await self.client.task(self.project, record.task_id)
            except SemaphoreError as exc:
                # Semaphore forgot the task (400: its database was reset): nothing to wait for.
                if exc.status == 400:
                    raise TaskFailed(f"Semaphore no longer knows task {record.task_id}",
                                     "task_lost", task_id=record.task_id) from None
                now = trio.current_time()
                failing_since = failing_since if failing_since is not None else now
                log.warning("semaphore_poll_failed", service=context.service,
                            task_id=record.task_id, detail=exc.message)
                if now - failing_since >= LOST_CONTACT_S:
                    raise TaskFailed(f"lost contact with Semaphore while waiting for task "
                                     f"{record.task_id}: {exc.message}", "semaphore_lost",
                                     task_id=record.task_id) from None
                continue
            failing_since = None
            status = str(task.get("status"))
            if status != record.status:
                log.info("semaphore_task_status", service=context.service,
                         task_id=record.task_id, status=status, previous=record.status)
                record.status = status
                self.automation.changed(record)
            if status == "waiting_confirmation" and not confirmed:
                if not self.config.confirm:
                    done = await self._stop_task(record, context)
                    raise TaskFailed(
                        f"Semaphore task {record.task_id} ({record.template}) waits for a "
                        f"confirmation (a Terraform plan?); Hestia {done} it. Set `confirm: "
                        "true` on the launcher to confirm such tasks",
                        "task_waiting_confirmation", task_id=record.task_id,
                        task_status=status)
                # Asked again at the next poll when Semaphore could not be reached.
                confirmed = await self._call(
                    self.client.confirm_task(self.project, record.task_id), context, "confirm")

    # --- after a crash (lifecycle/remote_recovery.py) --------------------------------------------

    def _journal_begin(self, context: LaunchContext) -> None:
        if self.journal is not None:
            self.journal.begin(machine=context.machine, backend=context.backend,
                               upstream=context.upstream, port=context.port,
                               config=self.config.model_dump_json(),
                               fingerprint=fingerprint(self.config), project=self.project,
                               semaphore_url=self.client.base_url,
                               stop_template=self.config.stop_template,
                               task_timeout=self.task_timeout)

    def adopted(self, context: LaunchContext) -> SemaphoreRunning:
        """The handle of a backend a previous Hestia started on this placement (its log tail
        from now on); its stop is the stop template."""
        return SemaphoreRunning(self, context, self._log_size())

    async def follow_task(self, record: TaskRecord, context: LaunchContext) -> None:
        """Wait for a task a previous Hestia created and did not see finish (the journal has
        it), as `run_task` waits for its own: until it succeeds, within what is left of
        `task_timeout` since it was created. Raises `TaskFailed`. When cancelled, a start task
        is asked to stop, as a cancelled start's is; a stop task is left to finish."""
        what = f"Semaphore {record.action} task {record.task_id} ({record.template})"
        self.automation.begin(record)
        log.info("semaphore_task_followed", service=context.service, action=record.action,
                 task_id=record.task_id, status=record.status)
        try:
            left = self.task_timeout - max(0.0, time.time() - record.started_at)
            with trio.move_on_after(max(0.0, left)) as deadline:
                await self._poll(record, context)
            if deadline.cancelled_caught:
                await self._stop_task(record, context)
                raise TaskFailed(f"{what} did not finish within {self.task_timeout:g}s of its "
                                 f"creation (status {record.status}); Hestia asked Semaphore "
                                 "to stop it", "task_timeout", task_id=record.task_id,
                                 task_status=record.status)
            lines = await self._output(record)
            self._log_lines(record, lines)
            if record.status != "success":
                raise TaskFailed(f"{what} ended {record.status}", f"task_{record.status}",
                                 task_id=record.task_id, task_status=record.status,
                                 log_tail=lines)
        except TaskFailed as exc:
            self.automation.finish(record, error=exc.detail)
            log.warning("semaphore_task_failed", service=context.service,
                        action=record.action, task_id=record.task_id, status=record.status,
                        detail=exc.detail)
            raise
        except BaseException:
            if record.action == "start" and record.status not in FINISHED:
                with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_STOP_S):
                    await self._stop_task(record, context)
            self.automation.finish(record, error="cancelled")
            raise
        self.automation.finish(record)

    async def _stop_task(self, record: TaskRecord, context: LaunchContext) -> str:
        """Ask Semaphore to end the task; says how ("rejected", "stopped")."""
        assert record.task_id is not None
        force = False  # a forced stop of a *waiting* task still runs it when dequeued (§7)
        if record.status == "waiting_confirmation":
            # A plain stop leaves such a task `stopping` for ever in 2.10, holding its template
            # (§8): reject it where Semaphore can (2.13 and later), else force the stop.
            try:
                await self.client.reject_task(self.project, record.task_id)
            except SemaphoreError as exc:
                if exc.status not in (404, 405):
                    log.warning("semaphore_reject_failed", service=context.service,
                                detail=exc.message)
                force = True
            else:
                log.info("semaphore_task_rejected", service=context.service,
                         task_id=record.task_id)
                return "rejected"
        if await self._call(self.client.stop_task(self.project, record.task_id, force=force),
                            context, "stop_request"):
            log.info("semaphore_task_stop_requested", service=context.service,
                     task_id=record.task_id, status=record.status, force=force)
        return "stopped"

    async def _call(self, call: Any, context: LaunchContext, what: str) -> bool:
        try:
            await call
        except SemaphoreError as exc:
            log.warning(f"semaphore_{what}_failed", service=context.service, detail=exc.message)
            return False
        return True

    async def _output(self, record: TaskRecord) -> list[str]:
        """The task's last lines; when they cannot be fetched, one line saying so (never an
        empty tail that looks like a silent task)."""
        assert record.task_id is not None
        try:
            return await self.client.output_tail(self.project, record.task_id, OUTPUT_LINES,
                                                 timeout=self.settings.output_timeout)
        except SemaphoreError as exc:
            log.warning("semaphore_output_failed", task_id=record.task_id, detail=exc.message)
            return [f"(Hestia could not fetch the output of task {record.task_id}: "
                    f"{exc.message})"]

    def _body(self, record: TaskRecord, context: LaunchContext,
              variables: dict[str, Any] | None = None) -> dict[str, Any]:
        config = self.config
        if variables is None:
            variables = releases.variables(config, context.environment(record.action))
        body: dict[str, Any] = {
            "template_id": record.template_id,
            "message": config.message or
            f"hestia: {record.action} {context.service} on {context.machine}"}
        if variables:
            # A string holding a JSON object, not an object (CONTRACT §5). None at all when
            # there are none: 2.10 fails any task variables on a template without environment.
            body["environment"] = json.dumps(variables)
        if config.limit is not None:
            body["limit"] = config.limit
        if config.arguments is not None:
            body["arguments"] = json.dumps(config.arguments)
        if config.git_branch is not None:
            body["git_branch"] = config.git_branch
        return body

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_line(self, line: str) -> None:
        self._log_lines(None, [line])

    def _log_lines(self, record: TaskRecord | None, lines: list[str]) -> None:
        if record is not None:
            lines = [f"--- hestia: task {record.task_id} ended {record.status} at "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}; its output:", *lines]
        try:
            with open_private(self.log_path, "a", encoding="utf-8") as log_file:
                log_file.writelines(line.rstrip("\n") + "\n" for line in lines)
        except OSError:
            pass  # the log is a convenience; the task's records and output stay in Semaphore


class SemaphoreRunning:
    """A backend a start task brought up somewhere; its stop is the stop template."""

    def __init__(self, launcher: SemaphoreLauncher, context: LaunchContext,
                 log_offset: int) -> None:
        self.pid: int | None = None
        self._launcher = launcher
        self._context = context
        self._log_offset = log_offset
        self._stop_once = StopOnce()

    def __repr__(self) -> str:
        return (f"<SemaphoreRunning {self._context.service} on {self._context.machine} "
                f"{self._stop_once.state('started')}>")

    async def wait(self) -> int | None:
        await trio.sleep_forever()  # nothing remote can be watched; health checks can

    async def stop(self) -> None:
        """Run the stop template and wait for it; never raises (a failure is logged)."""
        await self._stop_once(self._stop_now)

    async def _stop_now(self) -> None:
        ref = self._launcher.config.stop_template
        if ref is None:
            log.info("semaphore_no_stop_template", service=self._context.service)
            return
        try:
            await self._launcher.run_task("stop", ref, self._context)
        except TaskFailed as exc:
            log.warning("semaphore_stop_failed", service=self._context.service,
                        detail=exc.detail)

    def describe_exit(self, status: int | None) -> str:
        return "stopped responding"  # `wait` never returns: only for the protocol's sake

    def log_tail(self, lines: int = 20) -> list[str]:
        return read_tail(self._launcher.log_path, self._log_offset, lines)
