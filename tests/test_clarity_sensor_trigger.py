"""ClarityReportTrigger and ClarityReportSensor against the Clarity sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import random
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
from airflow_provider_clarify.hooks.clarity import ClarityAsyncHook, ClarityHook, ClaritySettings
from airflow_provider_clarify.sensors.clarity import ClarityReportSensor
from airflow_provider_clarify.triggers import clarity as trigger_module
from airflow_provider_clarify.triggers.clarity import POLL_JITTER, ClarityReportTrigger, poll_waits

if TYPE_CHECKING:
    import aiohttp

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


class ExtremeRandom:
    """Stands in for the trigger module's ``random``: every draw is the lowest (or highest) allowed."""

    def __init__(self, *, high: bool) -> None:
        self.high = high

    def uniform(self, low: float, high: float) -> float:
        return high if self.high else low


def record_steps(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record, in order, each wait the trigger asks for and each connection lookup and session it makes."""
    steps: list[Any] = []
    sleep, get_settings, session = (
        ClarityReportTrigger._sleep,
        ClarityAsyncHook.get_settings,
        ClarityAsyncHook.session,
    )

    async def recording_sleep(self: ClarityReportTrigger, seconds: float) -> None:
        steps.append(("wait", seconds))
        await sleep(self, seconds)

    async def recording_get_settings(self: ClarityAsyncHook) -> ClaritySettings:
        if self._settings is None:
            steps.append("connection lookup")
        return await get_settings(self)

    async def recording_session(self: ClarityAsyncHook) -> aiohttp.ClientSession:
        opened = await session(self)
        steps.append(("session", opened))
        return opened

    monkeypatch.setattr(ClarityReportTrigger, "_sleep", recording_sleep)
    monkeypatch.setattr(ClarityAsyncHook, "get_settings", recording_get_settings)
    monkeypatch.setattr(ClarityAsyncHook, "session", recording_session)
    return steps


def is_session(step: Any) -> bool:
    return isinstance(step, tuple) and step[0] == "session"


# -- poll spreading ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("high", "first", "later"), [(False, 0.0, 8.0), (True, 10.0, 12.0)])
def test_poll_waits_bounds(high: bool, first: float, later: float) -> None:
    waits = poll_waits(10.0, ExtremeRandom(high=high).uniform)
    assert [next(waits) for _ in range(4)] == pytest.approx([first, later, later, later])


def test_poll_waits_spread_the_first_poll_and_vary_the_rest_around_the_interval() -> None:
    firsts = [next(poll_waits(10.0, random.Random(seed).uniform)) for seed in range(200)]
    waits = poll_waits(10.0, random.Random(20261121).uniform)
    next(waits)
    later = [next(waits) for _ in range(500)]
    assert all(0.0 <= wait <= 10.0 for wait in firsts)
    assert min(firsts) < 1.0  # spread over the whole interval
    assert max(firsts) > 9.0
    assert all(10.0 * (1 - POLL_JITTER) <= wait <= 10.0 * (1 + POLL_JITTER) for wait in later)
    assert len(set(later)) == len(later)  # no two triggers' intervals stay in lock step
    assert sum(later) / len(later) == pytest.approx(10.0, rel=0.03)  # same API load on average


async def test_first_poll_waits_before_the_connection_lookup_and_the_session(
    sandbox: ClaritySandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.report_delay = 1.0  # in progress at the first poll (0.3 s), ready at the third (1.02 s)
    monkeypatch.setattr(trigger_module, "random", ExtremeRandom(high=True))
    steps = record_steps(monkeypatch)
    report_id = new_report(sandbox)
    (event,) = await events(make_trigger(report_id, poll_interval=0.3))
    assert event["status"] == "success"
    assert steps[:2] == [("wait", 0.3), "connection lookup"]
    assert is_session(steps[2])
    assert len(steps) > 3  # the report was still in progress at the first poll
    assert steps[3:] == [("wait", pytest.approx(0.36))] * len(steps[3:])
    assert steps.count("connection lookup") == 1  # once per trigger run, not per poll
    assert steps[2][1].closed  # one session for the whole run, closed at its end


async def test_waits_between_polls_vary_within_the_jitter(
    sandbox: ClaritySandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trigger_module, "random", random.Random(7))
    steps = record_steps(monkeypatch)
    report_id = new_report(sandbox)
    (event,) = await events(make_trigger(report_id, poll_interval=0.1))
    assert event["status"] == "success"
    waits = [step[1] for step in steps if isinstance(step, tuple) and step[0] == "wait"]
    first, later = waits[0], waits[1:]
    assert 0.0 <= first <= 0.1
    assert len(later) >= 2
    assert all(0.08 <= wait <= 0.12 for wait in later)
    assert len(set(later)) == len(later)
    assert len(polls(sandbox, report_id)) == len(later) + 1


async def test_a_first_wait_reaching_past_the_deadline_ends_in_one_check_at_the_deadline(
    sandbox: ClaritySandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.report_delay = 3600
    monkeypatch.setattr(trigger_module, "random", ExtremeRandom(high=True))
    report_id = new_report(sandbox)
    trigger = make_trigger(report_id, deadline_in=0.5, poll_interval=60)
    (event,) = await events(trigger)
    assert (event["status"], event["report_status"]) == ("timeout", "in-progress")
    (only,) = polls(sandbox, report_id)
    assert trigger.end_time <= only.received_at


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


async def test_final_check_at_the_deadline_catches_a_late_success(
    sandbox: ClaritySandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trigger_module, "random", ExtremeRandom(high=False))  # first poll at once
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
    first = make_trigger(report_id, deadline_in=2.0, poll_interval=0.2)
    running = asyncio.ensure_future(first.run().__anext__())
    await asyncio.sleep(0.8)  # the first poll comes within 0.2 s, the next ones 0.16-0.24 s apart
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
