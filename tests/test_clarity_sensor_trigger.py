"""ClarityReportTrigger and ClarityReportSensor against the Clarity sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from airflow.exceptions import AirflowRescheduleException  # airflow.sdk.exceptions only from 3.2
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from airflow_provider_clarify.exceptions import ClarityReportFailedError
from airflow_provider_clarify.hooks.clarity import ClarityHook
from airflow_provider_clarify.sensors.clarity import ClarityReportSensor
from airflow_provider_clarify.triggers.clarity import ClarityReportTrigger

if TYPE_CHECKING:
    from airflow_provider_clarify.testing.clarity import ClaritySandbox

WINDOW = {"start_time": "2024-01-01T00:00:00Z", "end_time": "2024-01-02T00:00:00Z"}


@pytest.fixture
def sandbox(clarity_sandbox: ClaritySandbox) -> ClaritySandbox:
    clarity_sandbox.report_delay = 0.5
    return clarity_sandbox


def new_report(sandbox: ClaritySandbox, **params: Any) -> str:
    record = ClarityHook().request_report(output_frequency="hour", all_datasources=True, **WINDOW, **params)
    return str(record["reportId"])


def make_trigger(report_id: str, *, deadline_in: float = 30.0, **kwargs: Any) -> ClarityReportTrigger:
    settings: dict[str, Any] = {"poll_interval": 0.1, "retry_backoff": 0.05, **kwargs}
    return ClarityReportTrigger(report_id=report_id, end_time=time.time() + deadline_in, **settings)


async def events(trigger: ClarityReportTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


def polls(sandbox: ClaritySandbox, report_id: str) -> list[Any]:
    return [r for r in sandbox.api.requests if r.path.endswith(f"/{report_id}")]


# -- trigger -----------------------------------------------------------------------------------------------
async def test_trigger_serializes_to_json_primitives_without_the_key(sandbox: ClaritySandbox) -> None:
    trigger = ClarityReportTrigger(report_id="JB1", end_time=1_900_000_000.5, org="o", poll_interval=5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_clarify.triggers.clarity.ClarityReportTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs == {
        "report_id": "JB1",
        "end_time": 1_900_000_000.5,
        "org": "o",
        "clarity_conn_id": "clarity_default",
        "poll_interval": 5.0,
        "retry_backoff": 1.0,
    }
    assert sandbox.api_key not in json.dumps(kwargs)
    assert ClarityReportTrigger(**kwargs).serialize() == (classpath, kwargs)


async def test_trigger_life_cycle_yields_one_small_success_event(sandbox: ClaritySandbox) -> None:
    report_id = new_report(sandbox)
    (event,) = await events(make_trigger(report_id))
    assert event == {
        "status": "success",
        "report_id": report_id,
        "message": "Ready",
        "report_status": "succeeded",
        "report": "datasource-measurements",
        "urls_expire_at": sandbox.report(report_id)["urlsExpireAt"],
    }
    assert len(polls(sandbox, report_id)) >= 2  # it waited while the report was in progress
    assert "X-Amz" not in json.dumps(event)


async def test_failed_report_gives_a_failed_event_with_clarity_message(sandbox: ClaritySandbox) -> None:
    sandbox.fail_next_reports(1, message="Report generation failed: no data for window")
    report_id = new_report(sandbox)
    (event,) = await events(make_trigger(report_id))
    assert (event["status"], event["message"]) == ("failed", "Report generation failed: no data for window")


async def test_unknown_status_gives_an_error_event(sandbox: ClaritySandbox) -> None:
    sandbox.unknown_status_next(1, status="queued")
    report_id = new_report(sandbox)
    (event,) = await events(make_trigger(report_id))
    assert event["status"] == "error"
    assert "unknown reportStatus 'queued'" in event["message"]


async def test_5xx_resets_and_slow_answers_while_polling_are_survived(sandbox: ClaritySandbox) -> None:
    report_id = new_report(sandbox)
    sandbox.api.faults.fail_next(2, status=503, path="/v2/report-request/")
    sandbox.api.faults.reset_next(1, path="/v2/report-request/")
    sandbox.api.faults.fail_next(1, status=500, path="/v2/report-request/")
    (event,) = await events(make_trigger(report_id))
    assert event["status"] == "success"
    assert [r.fault for r in polls(sandbox, report_id)][:4] == ["status", "status", "reset", "status"]


async def test_a_poll_that_times_out_is_retried(
    sandbox: ClaritySandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    report_id = new_report(sandbox)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CLARITY_FAST", json.dumps({**sandbox.connection(), "extra": {"timeout": 0.5}})
    )
    sandbox.api.faults.slow_next(1, delay=2, path="/v2/report-request/")
    (event,) = await events(make_trigger(report_id, clarity_conn_id="clarity_fast"))
    assert event["status"] == "success"
    first, *later = polls(sandbox, report_id)
    assert first.fault == "slow"
    assert later  # polled again after the time-out


async def test_errors_until_the_deadline_give_timeout_not_error(sandbox: ClaritySandbox) -> None:
    report_id = new_report(sandbox)
    sandbox.api.faults.fail_next(10_000, status=503, path="/v2/report-request/")
    trigger = make_trigger(report_id, deadline_in=1.0)
    (event,) = await events(trigger)
    assert event["status"] == "timeout"
    assert "last check failed (ClarityAPIError" in event["message"]
    assert polls(sandbox, report_id)[-1].received_at >= trigger.end_time


async def test_permanent_errors_give_an_error_event_without_the_key(sandbox: ClaritySandbox) -> None:
    report_id = new_report(sandbox)
    key = sandbox.api_key
    sandbox.api_key = "rotated-key-0123456789"
    (event,) = await events(make_trigger(report_id))
    assert event["status"] == "error"
    assert "HTTP 401" in event["message"]
    assert key not in json.dumps(event)
    assert len(polls(sandbox, report_id)) == 1
    (event,) = await events(make_trigger(report_id, clarity_conn_id="no_such_conn"))
    assert event["status"] == "error"
    assert "no_such_conn" in event["message"]


async def test_final_check_at_the_deadline_catches_a_late_success(sandbox: ClaritySandbox) -> None:
    sandbox.report_delay = 0.8
    report_id = new_report(sandbox)
    trigger = make_trigger(report_id, deadline_in=1.2, poll_interval=60)
    (event,) = await events(trigger)
    assert event["status"] == "success"
    first, final = polls(sandbox, report_id)
    assert first.received_at < trigger.end_time <= final.received_at


async def test_triggerer_restart_keeps_the_deadline(sandbox: ClaritySandbox) -> None:
    sandbox.report_delay = 3600  # never ready within the test
    report_id = new_report(sandbox)
    first = make_trigger(report_id, deadline_in=1.5, poll_interval=0.2)
    running = asyncio.ensure_future(first.run().__anext__())
    await asyncio.sleep(0.5)
    running.cancel()  # the triggerer stops; cleanup must not cancel the report
    with contextlib.suppress(asyncio.CancelledError):
        await running
    polled_before = len(polls(sandbox, report_id))
    assert polled_before >= 2

    classpath, kwargs = first.serialize()
    del first
    await asyncio.sleep(0.2)
    module, _, name = classpath.rpartition(".")
    trigger_class = getattr(importlib.import_module(module), name)
    second = trigger_class(**json.loads(json.dumps(kwargs)))  # as the triggerer does
    assert second.end_time == kwargs["end_time"]
    (event,) = await events(second)
    assert event["status"] == "timeout"
    assert event["report_status"] == "in-progress"
    last = polls(sandbox, report_id)[-1]
    assert kwargs["end_time"] <= last.received_at < kwargs["end_time"] + 1.0  # not a fresh, later deadline
    assert {r.method for r in sandbox.api.requests} == {"POST", "GET"}  # nothing was cancelled
    assert sandbox.report(report_id)["reportStatus"] == "in-progress"


# -- sensor ------------------------------------------------------------------------------------------------
def test_sensor_defers_after_one_check_with_an_absolute_deadline(sandbox: ClaritySandbox) -> None:
    report_id = new_report(sandbox)
    sensor = ClarityReportSensor(task_id="wait", report_id=report_id, poke_interval=7, timeout=600)
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})  # type: ignore[arg-type]
    after = time.time()
    trigger = deferred.value.trigger
    assert isinstance(trigger, ClarityReportTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert before + 600 <= trigger.end_time <= after + 600
    assert (trigger.report_id, trigger.poll_interval, trigger.org) == (report_id, 7.0, None)
    assert sandbox.api_key not in json.dumps(trigger.serialize()[1])
    assert len(polls(sandbox, report_id)) == 1


def test_sensor_returns_at_once_when_the_report_is_done(sandbox: ClaritySandbox) -> None:
    report_id = new_report(sandbox)
    sandbox.set_ready(report_id)
    summary = ClarityReportSensor(task_id="wait", report_id=report_id).execute(context={})  # type: ignore[arg-type]
    assert summary == {
        "report_id": report_id,
        "status": "succeeded",
        "report": "datasource-measurements",
        "urls_expire_at": sandbox.report(report_id)["urlsExpireAt"],
    }


def test_sensor_first_check_fails_on_a_failed_report(sandbox: ClaritySandbox) -> None:
    sandbox.fail_next_reports(1, message="Report generation failed: internal error")
    report_id = new_report(sandbox)
    sandbox.set_ready(report_id)
    with pytest.raises(ClarityReportFailedError, match="internal error"):
        ClarityReportSensor(task_id="wait", report_id=report_id).execute(context={})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "error", "match"),
    [
        (None, AirflowException, "no valid event"),
        ({"status": "cancelled", "report_id": "JB1"}, AirflowException, "no valid event"),
        ("success", AirflowException, "no valid event"),
        ({"status": "failed", "report_id": "JB1", "message": "boom"}, ClarityReportFailedError, "boom"),
        ({"status": "error", "report_id": "JB1", "message": "HTTP 401"}, AirflowException, "HTTP 401"),
        ({"status": "timeout", "report_id": "JB1", "message": "late"}, AirflowSensorTimeout, "late"),
    ],
)
def test_execute_complete_rejects_bad_events(event: Any, error: type[Exception], match: str) -> None:
    sensor = ClarityReportSensor(task_id="wait", report_id="JB1")
    with pytest.raises(error, match=match):
        sensor.execute_complete(context={}, event=event)  # type: ignore[arg-type]


def test_execute_complete_returns_the_summary_from_the_event() -> None:
    event = {
        "status": "success",
        "report_id": "JB1",
        "message": "Ready",
        "report_status": "succeeded",
        "report": "node-measurements",
        "urls_expire_at": "2030-01-01T00:00:00.000Z",
    }
    sensor = ClarityReportSensor(task_id="wait", report_id="JB1")
    assert sensor.execute_complete(context={}, event=event) == {  # type: ignore[arg-type]
        "report_id": "JB1",
        "status": "succeeded",
        "report": "node-measurements",
        "urls_expire_at": "2030-01-01T00:00:00.000Z",
    }


@pytest.mark.parametrize(
    ("soft_fail", "error"), [(True, AirflowSkipException), (False, AirflowSensorTimeout)]
)
def test_deferred_timeout_honours_soft_fail(soft_fail: bool, error: type[Exception]) -> None:
    sensor = ClarityReportSensor(task_id="wait", report_id="JB1", soft_fail=soft_fail)
    timeout_event = {"status": "timeout", "report_id": "JB1", "message": "still in-progress at the deadline"}
    with pytest.raises(error):
        sensor.resume_execution("execute_complete", {"event": timeout_event}, context={})  # type: ignore[arg-type]


def test_poke_mode_waits_in_the_worker(sandbox: ClaritySandbox) -> None:
    report_id = new_report(sandbox)
    sensor = ClarityReportSensor(
        task_id="wait", report_id=report_id, deferrable=False, poke_interval=0.1, timeout=30
    )
    summary = sensor.execute(context={})  # type: ignore[arg-type]
    assert summary["status"] == "succeeded"
    assert len(polls(sandbox, report_id)) >= 2


@pytest.mark.parametrize(
    ("soft_fail", "error"), [(True, AirflowSkipException), (False, AirflowSensorTimeout)]
)
def test_poke_mode_timeout_honours_soft_fail(
    sandbox: ClaritySandbox, soft_fail: bool, error: type[Exception]
) -> None:
    sandbox.report_delay = 3600
    report_id = new_report(sandbox)
    sensor = ClarityReportSensor(
        task_id="wait",
        report_id=report_id,
        deferrable=False,
        poke_interval=0.1,
        timeout=0.3,
        soft_fail=soft_fail,
    )
    with pytest.raises(error):
        sensor.execute(context={})  # type: ignore[arg-type]


def test_poke_mode_fails_with_clarity_message(sandbox: ClaritySandbox) -> None:
    sandbox.fail_next_reports(1, message="Report generation failed: quota of rows")
    report_id = new_report(sandbox)
    sensor = ClarityReportSensor(task_id="wait", report_id=report_id, deferrable=False, poke_interval=0.1)
    with pytest.raises(ClarityReportFailedError, match="quota of rows"):
        sensor.execute(context={})  # type: ignore[arg-type]


def test_poke_mode_fails_clearly_on_an_unknown_status(sandbox: ClaritySandbox) -> None:
    sandbox.unknown_status_next(1, status="archived")
    report_id = new_report(sandbox)
    sandbox.set_ready(report_id)
    sensor = ClarityReportSensor(task_id="wait", report_id=report_id, deferrable=False, poke_interval=0.1)
    with pytest.raises(AirflowException, match="unknown reportStatus 'archived'"):
        sensor.execute(context={})  # type: ignore[arg-type]


class _TaskInstance:
    def get_first_reschedule_date(self, context: Any) -> None:
        return None


def test_reschedule_mode_frees_the_worker_until_done(sandbox: ClaritySandbox) -> None:
    report_id = new_report(sandbox)
    sensor = ClarityReportSensor(
        task_id="wait", report_id=report_id, deferrable=False, mode="reschedule", poke_interval=5
    )
    context: Any = {"ti": _TaskInstance()}
    with pytest.raises(AirflowRescheduleException):
        sensor.execute(context)
    sandbox.set_ready(report_id)
    assert sensor.execute(context)["status"] == "succeeded"
