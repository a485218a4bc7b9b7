"""The fault campaign: the main example DAG under ``dag.test()`` while one fault at a time is injected.

For every fault the run must end in success, or in a failure whose message names the cause; when it
succeeds Clarify must hold exactly the points of the report (none missing, none extra, no value changed);
exactly one report is requested per run (none when the quota is spent); and no secret -- API key,
password, client secret, OAuth token, URL signature -- appears in any captured log text (task output as
printed; third-party DEBUG records after Airflow's secrets masker), XCom value, rendered template field,
trigger argument or trigger event. Each fault must also be seen to happen in the sandboxes' records.

Test-only speed-ups that do not change what is tested: Airflow's task ``retry_delay`` is 0, the backoff
between the hooks' retries is 50 ms (attempt counts and ``Retry-After`` waits are unchanged), the report is
small (two datasources, hourly, one fixed day) and becomes ready at a chosen status check instead of after a
delay. Each run adds a row to the reliability matrix
(``docs/reliability.md``, see ``conftest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from faults_support import (
    MatrixRow,
    ScriptedFaults,
    compare_points,
    exception_lines,
    expected_points,
    normalise,
    points_sent,
    secret_hits,
    secret_values,
    stored_points,
)

from airflow_provider_clarify.testing import clarity as clarity_sandbox_module
from airflow_provider_clarify.testing.reports import default_fleet, read_report_table
from airflow_provider_clarify.testing.sandbox import Sandbox
from airflow_provider_clarify.triggers.clarity import ClarityReportTrigger
from airflow_provider_clarify.utils.retries import wait_retry_after_or_backoff

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from airflow.triggers.base import TriggerEvent

    from airflow_provider_clarify.testing._server import SandboxServer

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "example_clarity_to_clarify"
ORG = "sandboxOrg1A2B"
#: A fixed report window (instead of the run's data interval), so that the report -- and the generated page --
#: are the same in every run.
WINDOW = {"start_time": "2026-01-14T00:00:00Z", "end_time": "2026-01-15T00:00:00Z"}
#: The path of a report's status (the documented, singular spelling).
STATUS_PATH = "/v2/report-request/"
#: Attempts of one Clarify call: the hook's default retry_limit (5) + 1.
CLARIFY_ATTEMPTS = 6


# -- one run -----------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One fault run: the sandboxes, the changes to the DAG, and what the run left behind."""

    sandbox: Sandbox
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path
    clarify_auth: str = "basic"
    task_changes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"request_report": dict(WINDOW)})
    #: Report files as generated, before a fault spoiled them (report id -> copies).
    pristine: dict[str, list[Path]] = field(default_factory=dict)
    #: The report turns ready (or failed...) when this status check arrives: 1 is the sensor's first check,
    #: 2 the trigger's first poll. Reports never get ready by themselves in this campaign.
    ready_at_check: int = 3
    #: Trigger arguments serialized during the run, and the events triggers yielded.
    serialized: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    restarted_mid_poll: bool = False

    def __post_init__(self) -> None:
        # Every server gets a scripted fault plan for this run (the plain plans come back afterwards).
        for server in (self.sandbox.clarify, self.sandbox.clarity.api, self.sandbox.clarity.store):
            self.monkeypatch.setattr(server, "faults", ScriptedFaults())

    @staticmethod
    def scripted(server: SandboxServer) -> ScriptedFaults:
        """The :class:`ScriptedFaults` plan of ``server`` in this run.

        :param server: a sandbox server.
        """
        assert isinstance(server.faults, ScriptedFaults)
        return server.faults

    def status_checks(self) -> int:
        """How many times the report's status was read so far."""
        return sum(1 for r in self.sandbox.clarity.api.requests if r.path.startswith(STATUS_PATH))

    def spoil_report_files(self, spoil: Callable[[bytes], bytes]) -> None:
        """Make the stored report files differ from the report (a pristine copy is kept for the checks).

        :param spoil: stored bytes -> the bytes the object store serves instead.
        """
        original = clarity_sandbox_module.write_report_files
        keep = self.tmp_path / "pristine"

        def write_spoiled(spec: Any, directory: Path, report_id: str, **kwargs: Any) -> list[Path]:
            paths = original(spec, directory, report_id, **kwargs)
            (keep / report_id).mkdir(parents=True)
            self.pristine[report_id] = [Path(shutil.copy(p, keep / report_id / p.name)) for p in paths]
            for path in paths:
                path.write_bytes(spoil(path.read_bytes()))
            return paths

        self.monkeypatch.setattr(clarity_sandbox_module, "write_report_files", write_spoiled)

    def injected(self) -> list[str]:
        """``"<server> <path> <fault>"`` for every request a fault plan answered."""
        clarity = self.sandbox.clarity
        servers = {"clarify": self.sandbox.clarify, "clarity": clarity.api, "store": clarity.store}
        return [
            f"{name} {r.path} {r.fault}" for name, srv in servers.items() for r in srv.requests if r.fault
        ]


def answered(server: SandboxServer, status: int) -> int:
    """How many requests ``server`` answered with ``status`` by its own logic (not a fault plan).

    :param server: a sandbox server.
    :param status: the HTTP status.
    """
    return sum(1 for r in server.requests if r.status == status and not r.fault)


@dataclass(frozen=True)
class Fault:
    """A fault of the campaign.

    :param id: the test id.
    :param fault: what is injected (for the matrix).
    :param step: where in the run.
    :param arm: sets the fault up before the run.
    :param fired: tells from the sandboxes' records (after the run) that the fault really happened.
    :param outcome: the run's expected state.
    :param cause: words one exception line of a failed task (try) must contain.
    :param reports: reports the run must request.
    :param tries: tasks expected to need Airflow task retries: task -> tries.
    :param bug: the reason of a strict xfail while the product does not keep its promise here.
    """

    id: str
    fault: str
    step: str
    arm: Callable[[Run], None]
    fired: Callable[[Run], bool]
    outcome: str = "success"
    cause: tuple[str, ...] = ()
    reports: int = 1
    tries: dict[str, int] = field(default_factory=dict)
    bug: str = ""


# -- the faults --------------------------------------------------------------------------------------------
def any_injected(run: Run) -> bool:
    return bool(run.injected())


def several_inserts(run: Run) -> None:
    """Small insert requests, so that the report needs several of them."""
    run.task_changes.setdefault("load_into_clarify", {})["max_request_bytes"] = 8192


def clarify_503(run: Run) -> None:
    run.sandbox.clarify.faults.fail_next(2, status=503, path="/v1/rpc")


def clarify_rpc_error(run: Run) -> None:
    run.sandbox.clarify.rpc_error_next(2, code=-32015, message="Try again")


def clarify_429(run: Run) -> None:
    run.sandbox.clarify.faults.throttle_next(2, retry_after=1, path="/v1/rpc")


def clarify_throttle_timeout(run: Run) -> None:
    # Clarify queues requests beyond its rate; one that would wait too long times out (HTTP 504).
    clarify = run.sandbox.clarify
    run.monkeypatch.setattr(clarify, "rate_limit", 0.5)
    run.monkeypatch.setattr(clarify, "queue_timeout", 0.3)
    several_inserts(run)


def throttle_timed_out(run: Run) -> bool:
    return any(r.info.get("timed_out") for r in run.sandbox.clarify.requests)


def clarify_reset(run: Run) -> None:
    run.sandbox.clarify.faults.reset_next(2, path="/v1/rpc")


def oauth_token_expiry(run: Run) -> None:
    run.clarify_auth = "oauth"
    several_inserts(run)
    clarify = run.sandbox.clarify
    run.scripted(clarify).on_request(2, clarify.expire_tokens, path="/v1/rpc")


def token_renewed(run: Run) -> bool:
    return answered(run.sandbox.clarify, 401) == 1 and run.sandbox.clarify.token_requests == 2


def insert_fails_half_way(run: Run) -> None:
    several_inserts(run)
    plan = run.scripted(run.sandbox.clarify)
    plan.on_request(2, lambda: plan.fail_next(CLARIFY_ATTEMPTS, status=503, path="/v1/rpc"), path="/v1/rpc")


def request_503(run: Run) -> None:
    run.sandbox.clarity.api.faults.fail_next(2, status=503, path="/v2/report-requests")


def report_request_answer_lost(run: Run) -> None:
    # Clarity creates the report, but its answer breaks off half-way (a proxy or load balancer drops it).
    run.sandbox.clarity.api.faults.truncate_next(1, path="/v2/report-requests")


def quota_spent(run: Run) -> None:
    run.monkeypatch.setattr(run.sandbox.clarity, "quota_per_day", 0)


def in_trigger(arm: Callable[[ScriptedFaults], None]) -> Callable[[Run], None]:
    """Arm a fault of the status checks when the trigger polls for the first time (after the sensor's check
    found the report in progress and deferred); the report is ready two polls after the faults."""

    def setup(run: Run) -> None:
        plan = run.scripted(run.sandbox.clarity.api)
        plan.on_request(2, lambda: arm(plan), path=STATUS_PATH)
        run.ready_at_check = 5

    return setup


poll_503 = in_trigger(lambda plan: plan.fail_next(2, status=503, path=STATUS_PATH))
poll_429 = in_trigger(lambda plan: plan.throttle_next(2, retry_after=1, path=STATUS_PATH))
poll_resets = in_trigger(lambda plan: plan.reset_next(2, path=STATUS_PATH))


def report_failed(run: Run) -> None:
    run.sandbox.clarity.fail_next_reports(1, message="Report generation failed: internal error")


def unknown_status(run: Run) -> None:
    run.sandbox.clarity.unknown_status_next(1, status="queued")


def trigger_restart(run: Run) -> None:
    """The triggerer stops while the trigger polls; a new triggerer re-creates it from its serialized form."""
    original = ClarityReportTrigger.run

    async def restarted(self: ClarityReportTrigger) -> AsyncIterator[TriggerEvent]:
        first = asyncio.ensure_future(original(self).__anext__())
        while run.status_checks() < 3 and not first.done():  # the sensor's check and two polls  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        run.restarted_mid_poll = not first.done()
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        classpath, kwargs = self.serialize()
        module, _, name = classpath.rpartition(".")
        again = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
        async for event in original(again):
            yield event

    run.monkeypatch.setattr(ClarityReportTrigger, "run", restarted)
    run.ready_at_check = 5  # two polls of the re-created trigger


def trigger_recreated(run: Run) -> bool:
    # Serialized once when the sensor deferred, once more by the restart; the deadline is kept.
    deadlines = {kwargs["end_time"] for _, kwargs in run.serialized}
    return run.restarted_mid_poll and len(run.serialized) == 2 and len(deadlines) == 1


def download_500(run: Run) -> None:
    run.sandbox.clarity.store.faults.fail_next(2, status=500)


def download_resets(run: Run) -> None:
    run.sandbox.clarity.store.faults.reset_next(2)


def download_breaks_off(run: Run) -> None:
    run.sandbox.clarity.store.faults.truncate_next(2)


def resumed_with_range(run: Run) -> bool:
    ranged = [r for r in run.sandbox.clarity.store.requests if "Range" in r.headers]
    return bool(run.injected()) and bool(ranged)


def urls_expire(run: Run) -> None:
    clarity = run.sandbox.clarity
    run.scripted(clarity.store).on_request(1, clarity.expire_urls_now)


def expired_url_refused(run: Run) -> bool:
    return answered(run.sandbox.clarity.store, 403) == 1


def truncated_gzip(run: Run) -> None:
    run.spoil_report_files(lambda data: data[: len(data) // 2])


def corrupt_parquet(run: Run) -> None:
    run.task_changes["request_report"]["file_format"] = "parquet"

    def spoil(data: bytes) -> bytes:
        middle = len(data) // 2
        return data[:8] + bytes(b ^ 0x5A for b in data[8:middle]) + data[middle:]

    run.spoil_report_files(spoil)


def zero_byte_file(run: Run) -> None:
    run.spoil_report_files(lambda data: b"")


def files_spoiled(run: Run) -> bool:
    return bool(run.pristine)


LOAD_RETRIED = {"load_into_clarify": 3}  # the load task fails on every try (retries=2)

FAULTS: list[Fault] = [
    Fault("none", "none (baseline)", "–", lambda run: None, lambda run: not run.injected()),
    Fault("clarify-503", "Clarify HTTP 503, twice", "insert", clarify_503, any_injected),
    Fault(
        "clarify-rpc-32015",
        "Clarify JSON-RPC error -32015 (try again), twice",
        "insert",
        clarify_rpc_error,
        any_injected,
    ),
    Fault("clarify-429", "Clarify HTTP 429 with Retry-After, twice", "insert", clarify_429, any_injected),
    Fault(
        "clarify-throttle-timeout",
        "Clarify throttling: requests time out in its rate-limit queue",
        "insert",
        clarify_throttle_timeout,
        throttle_timed_out,
    ),
    Fault("clarify-reset", "Clarify connection reset, twice", "insert", clarify_reset, any_injected),
    Fault(
        "oauth-expiry", "OAuth access token expires mid-transfer", "insert", oauth_token_expiry, token_renewed
    ),
    Fault(
        "insert-fails-half-way",
        "Clarify down from the 2nd insert request on, beyond the hook's retries; the task is retried",
        "insert",
        insert_fails_half_way,
        any_injected,
        cause=("ClarifyRPCError", "insert request 2 failed; 1 earlier request(s) were stored", "idempotent"),
        tries={"load_into_clarify": 2},
    ),
    Fault(
        "request-503",
        "Clarity HTTP 503 on the report request, twice",
        "request",
        request_503,
        any_injected,
    ),
    Fault(
        "request-answer-lost",
        "Clarity's answer to the report request breaks off (the report was created)",
        "request",
        report_request_answer_lost,
        any_injected,
        outcome="failed",
        cause=("ClarityReportRequestUncertainError", "its answer was lost"),
    ),
    Fault(
        "quota-429",
        "Clarity HTTP 429 on the report request (daily quota spent)",
        "request",
        quota_spent,
        lambda run: answered(run.sandbox.clarity.api, 429) == 3,
        outcome="failed",
        cause=("ClarityQuotaExceededError", "report quota is spent"),
        reports=0,
        tries={"request_report": 3},
    ),
    Fault(
        "poll-503",
        "Clarity HTTP 503 while polling, twice",
        "poll",
        poll_503,
        any_injected,
    ),
    Fault("poll-429", "Clarity HTTP 429 while polling, twice", "poll", poll_429, any_injected),
    Fault("poll-reset", "Clarity connection reset while polling, twice", "poll", poll_resets, any_injected),
    Fault(
        "report-failed",
        "Clarity report ends failed",
        "poll",
        report_failed,
        lambda run: run.sandbox.clarity.reports != [],
        outcome="failed",
        cause=("ClarityReportFailedError", "Report generation failed: internal error"),
        tries={"wait_for_report": 3},
    ),
    Fault(
        "unknown-status",
        "Clarity report ends in an unknown status",
        "poll",
        unknown_status,
        lambda run: run.sandbox.clarity.reports != [],
        outcome="failed",
        cause=("AirflowException", "unknown reportStatus 'queued'"),
        tries={"wait_for_report": 3},
    ),
    Fault(
        "trigger-restart",
        "trigger dropped and re-created (triggerer restart)",
        "poll",
        trigger_restart,
        trigger_recreated,
    ),
    Fault("download-500", "object store HTTP 500, twice", "download", download_500, any_injected),
    Fault(
        "download-reset", "object store connection reset, twice", "download", download_resets, any_injected
    ),
    Fault(
        "download-breaks-off",
        "download breaks off half-way, twice",
        "download",
        download_breaks_off,
        resumed_with_range,
    ),
    Fault("urls-expired", "pre-signed URLs expired", "download", urls_expire, expired_url_refused),
    Fault(
        "truncated-gzip",
        "report file is a truncated gzip",
        "parse",
        truncated_gzip,
        files_spoiled,
        outcome="failed",
        cause=("AirflowException", ".csv.gz", "corrupt or truncated", "Truncated compressed stream"),
        tries=LOAD_RETRIED,
    ),
    Fault(
        "corrupt-parquet",
        "report file is a corrupt Parquet file",
        "parse",
        corrupt_parquet,
        files_spoiled,
        outcome="failed",
        cause=("AirflowException", ".parquet", "corrupt or truncated"),
        tries=LOAD_RETRIED,
    ),
    Fault(
        "zero-byte-file",
        "report file has zero bytes",
        "parse",
        zero_byte_file,
        files_spoiled,
        outcome="failed",
        cause=("ValueError", ".csv.gz", "report file is empty"),
        tries=LOAD_RETRIED,
    ),
]


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[Sandbox]:
    fleet = default_fleet(ORG, nodes=1, reference_sites=1)
    with Sandbox(clarity={"org": ORG, "datasources": fleet, "report_delay": 3600}) as both:
        yield both


@pytest.fixture
def run(airflow_db: None, shared_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    shared_sandbox.clarify.reset()
    shared_sandbox.clarity.reset()
    _forget_report_variables()
    monkeypatch.setattr(wait_retry_after_or_backoff, "backoff", lambda self, attempt: 0.05)
    return Run(sandbox=shared_sandbox, monkeypatch=monkeypatch, tmp_path=tmp_path)


def _forget_report_variables() -> None:
    """Each fault run starts without remembered reports (the window is the same in every run)."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Variable).filter(Variable.key.like("clarity_report_%")).delete(
            synchronize_session=False
        )


# -- running and checking ----------------------------------------------------------------------------------
@dataclass
class Captured:
    """What a run left behind, for the checks.

    :param state: the DAG run's state.
    :param tasks: task id -> (state, tries).
    :param output: everything printed (the tasks' log output included).
    :param texts: where -> captured text, for the secret scan.
    :param raw_records: the standard-library log records before masking (only to prove the scan looked
        where secrets would be).
    """

    state: str
    tasks: dict[str, tuple[str, int]]
    output: str
    texts: dict[str, str]
    raw_records: str


def _record_triggers(run: Run) -> None:
    serialize, trigger_run = ClarityReportTrigger.serialize, ClarityReportTrigger.run

    def recording_serialize(self: ClarityReportTrigger) -> tuple[str, dict[str, Any]]:
        result = serialize(self)
        run.serialized.append(result)
        return result

    async def recording_run(self: ClarityReportTrigger) -> AsyncIterator[TriggerEvent]:
        async for event in trigger_run(self):
            run.events.append(event.payload)
            yield event

    run.monkeypatch.setattr(ClarityReportTrigger, "serialize", recording_serialize)
    run.monkeypatch.setattr(ClarityReportTrigger, "run", recording_run)


def _record_texts(records: list[logging.LogRecord]) -> list[str]:
    texts = []
    for record in records:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        texts.append(text)
    return texts


def _log_texts(records: list[logging.LogRecord]) -> str:
    """Standard-library log records (third-party DEBUG output included) as Airflow's secrets masker
    leaves them, and Airflow's log files."""
    from airflow.providers.common.compat.sdk import redact

    texts = [str(redact(text)) for text in _record_texts(records)]
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    if logs.exists():
        texts += [p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file()]
    return "\n".join(texts)


def _run_dag(run: Run, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Captured:
    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from dag_helpers import dagbag_api, rendered_fields

    sandbox = run.sandbox
    env = {
        "AIRFLOW_CONN_CLARIFY_DEFAULT": sandbox.clarify.connection_json(run.clarify_auth),
        "AIRFLOW_CONN_CLARITY_DEFAULT": sandbox.clarity.connection_json(),
        "CLARITY_EXAMPLE_ARCHIVE": (run.tmp_path / "archive").as_uri() + "/",
        "CLARITY_EXAMPLE_POLL_SECONDS": "0.2",
    }
    for name, value in env.items():
        run.monkeypatch.setenv(name, value)
    _record_triggers(run)
    clarity = sandbox.clarity

    def make_ready() -> None:
        for report in clarity.reports:
            clarity.set_ready(report["reportId"])

    run.scripted(clarity.api).on_request(run.ready_at_check, make_ready, path=STATUS_PATH)

    dagbag, sync_bag_to_db = dagbag_api()
    bag = dagbag(dag_folder=str(REPO / "example_dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag(DAG_ID)
    for task in dag.tasks:
        task.retry_delay = timedelta(0)
        for name, value in run.task_changes.get(task.task_id, {}).items():
            setattr(task, name, value)
    sync_bag_to_db(bag, "dags-folder", None)

    caplog.set_level(logging.DEBUG)
    capfd.readouterr()
    dag_run = dag.test()
    out, err = capfd.readouterr()
    with create_session() as session:
        tis = dag_run.get_task_instances(session=session)
        tasks = {ti.task_id: (str(ti.state), ti.try_number) for ti in tis}
        xcoms: list[Any] = list(session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=DAG_ID)))
        xcom = [[x.task_id, x.key, XComModel.deserialize_value(x)] for x in xcoms]
        stored_triggers = [t.kwargs for t in session.query(Trigger).all()]
        next_kwargs = [ti.next_kwargs for ti in tis]
    return Captured(
        state=str(dag_run.state),
        tasks=tasks,
        output=out + err,
        texts={
            "task output": out + err,
            "log records": _log_texts(caplog.records),
            "XCom": json.dumps(xcom, default=str),
            "rendered fields": rendered_fields(dag_run),
            "trigger kwargs": json.dumps([run.serialized, stored_triggers], default=str),
            "trigger events": json.dumps([run.events, next_kwargs], default=str),
        },
        raw_records="\n".join(_record_texts(caplog.records)),
    )


def _expected(run: Run, report_id: str | None) -> dict[tuple[str, str], float] | None:
    """The points of the report as Clarity built it; None when there is nothing to load."""
    if report_id is None:
        return None
    clarity = run.sandbox.clarity
    if clarity.report(report_id)["reportStatus"] != "succeeded":
        return None
    paths = run.pristine.get(report_id)
    return expected_points(read_report_table(paths) if paths else clarity.report_table(report_id))


@pytest.mark.dag
@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(f, id=f.id, marks=[pytest.mark.xfail(strict=True, reason=f.bug)] if f.bug else [])
        for f in FAULTS
    ],
)
def test_fault(
    fault: Fault,
    run: Run,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    reliability_rows: list[MatrixRow],
) -> None:
    fault.arm(run)
    captured = _run_dag(run, caplog, capfd)
    sandbox = run.sandbox

    reports = sandbox.clarity.reports
    report_id = reports[0]["reportId"] if reports else None
    expected = _expected(run, report_id)
    check = (
        None if expected is None else compare_points(expected, stored_points(sandbox), points_sent(sandbox))
    )
    errors = exception_lines(captured.output)
    secrets = secret_values(sandbox)
    hits = secret_hits(captured.texts, secrets)
    retried = {task: tries for task, (_, tries) in captured.tasks.items() if tries > 1}
    last_error = normalise(errors[-1] if errors else "?")
    outcome = f"failed: {last_error}" if captured.state != "success" else "success"
    if captured.state == "success" and retried:
        outcome += f" (after a failed try: {last_error})"
    reliability_rows.append(
        MatrixRow(
            order=FAULTS.index(fault),
            fault=fault.fault,
            step=fault.step,
            outcome=outcome,
            points=check,
            reports=len(reports),
            tries=retried,
            secrets=hits,
            bug=fault.bug,
        )
    )

    assert fault.fired(run), f"the fault did not happen: {run.injected()}"
    if reports and captured.tasks["wait_for_report"][0] != "upstream_failed":
        assert len(run.events) == 1, run.events  # the sensor deferred once; the trigger yielded one event
    assert hits == [], f"secrets leaked: {hits}"
    assert len(reports) == fault.reports, f"reports requested: {[r['reportId'] for r in reports]}"
    assert captured.state == fault.outcome, (captured.tasks, errors[-3:])
    assert retried == fault.tries, captured.tasks
    if fault.cause:
        assert any(all(word in line for word in fault.cause) for line in errors), errors[-3:]
    # The provider never logs a signed URL, not even masked (the masker hides the whole query string).
    assert "X-Amz-" not in captured.output
    assert "?***" not in captured.output
    if fault.outcome == "success":
        # The scan looked where signatures would be: urllib3's DEBUG lines of the downloads carry them
        # before Airflow's secrets masker, and not after it.
        signatures = [value for name, value in secrets.items() if name.startswith("URL signature")]
        assert signatures
        assert any(signature in captured.raw_records for signature in signatures)
        assert check is not None
        assert check.expected > 0
        assert (check.missing, check.extra, check.wrong) == (0, 0, 0), check
        archived = {p.name: p.read_bytes() for p in (run.tmp_path / "archive").rglob("*") if p.is_file()}
        assert archived == {p.name: p.read_bytes() for p in sandbox.clarity.report_files(str(report_id))}
    else:
        assert check is None or check.extra == check.wrong == 0, check
