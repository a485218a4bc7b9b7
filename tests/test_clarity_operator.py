"""ClarityRequestReportOperator: validation, window, waiting, and quota-safe reuse in real task runs."""

from __future__ import annotations

import inspect
import json
import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pendulum
import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowSensorTimeout, TaskDeferred
from dag_helpers import rendered_fields, run_dag_test, task_result

from airflow_provider_clarify.exceptions import (
    ClarityQuotaExceededError,
    ClarityReportFailedError,
    ClarityReportRequestUncertainError,
)
from airflow_provider_clarify.operators.clarity import ClarityRequestReportOperator
from airflow_provider_clarify.triggers.clarity import ClarityReportTrigger

if TYPE_CHECKING:
    from airflow_provider_clarify.testing.clarity import ClaritySandbox

WINDOW = {"start_time": "2024-01-01T00:00:00Z", "end_time": "2024-01-02T00:00:00Z"}


@pytest.fixture
def sandbox(clarity_sandbox: ClaritySandbox) -> ClaritySandbox:
    clarity_sandbox.report_delay = 0.3
    return clarity_sandbox


def operator(**kwargs: Any) -> ClarityRequestReportOperator:
    settings: dict[str, Any] = {"task_id": "request", "output_frequency": "hour", "all_datasources": True}
    return ClarityRequestReportOperator(**{**settings, **kwargs})


def posts(sandbox: ClaritySandbox) -> int:
    return sum(1 for r in sandbox.api.requests if r.method == "POST")


# -- signature ---------------------------------------------------------------------------------------------
def test_signature_matches_the_spec() -> None:
    params = inspect.signature(ClarityRequestReportOperator.__init__).parameters
    expected = {
        "report": "datasource-measurements",
        "output_frequency": inspect.Parameter.empty,
        "start_time": None,
        "end_time": None,
        "lookback": timedelta(days=1),
        "datasource_ids": None,
        "all_datasources": False,
        "node_ids": None,
        "ref_site_ids": None,
        "org": None,
        "metric_label_style": "canonical",
        "file_format": "csv",
        "metric_select": None,
        "qc_assessment": False,
        "qc_flags": False,
        "wait_for_completion": False,
        "deferrable": True,
        "poll_interval": 60,
        "timeout": timedelta(hours=1),
        "reuse_existing_report": True,
        "reuse_max_age": timedelta(hours=24),
        "clarity_conn_id": "clarity_default",
    }
    assert {name: p.default for name, p in params.items() if name in expected} == expected
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in expected)
    op = operator(datasource_ids=["D1"])
    for field in ClarityRequestReportOperator.template_fields:
        assert hasattr(op, field)
    doc = ClarityRequestReportOperator.__doc__ or ""
    for name in expected:
        assert len(re.findall(rf":param {name}:", doc)) == 1, name


# -- without a task run (no Variables there) ---------------------------------------------------------------
def test_bad_input_fails_before_any_request(sandbox: ClaritySandbox) -> None:
    with pytest.raises(ValueError, match=r"^datasource_ids\[1\]"):
        operator(all_datasources=False, datasource_ids=["D1", ""], **WINDOW).execute(context={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^start_time/end_time"):
        operator(start_time="2024-01-02", end_time="2024-01-01").execute(context={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^report"):
        operator(report="measurements", **WINDOW).execute(context={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^timeout"):
        operator(timeout=0, **WINDOW).execute(context={})  # type: ignore[arg-type]
    assert sandbox.api.requests == []


def test_window_comes_from_the_data_interval_or_the_lookback(
    sandbox: ClaritySandbox, caplog: pytest.LogCaptureFixture
) -> None:
    interval: Any = {
        "data_interval_start": pendulum.datetime(2024, 3, 1, tz="Europe/Oslo"),
        "data_interval_end": pendulum.datetime(2024, 3, 2, tz="Europe/Oslo"),
    }
    operator().execute(context=interval)
    empty: Any = {
        "data_interval_start": interval["data_interval_end"],
        "data_interval_end": interval["data_interval_end"],
    }
    operator(lookback=timedelta(hours=6)).execute(context=empty)
    windows = [(r["query"]["startTime"], r["query"]["endTime"]) for r in sandbox.reports]
    assert windows == [
        ("2024-02-29T23:00:00.000Z", "2024-03-01T23:00:00.000Z"),
        ("2024-03-01T17:00:00.000Z", "2024-03-01T23:00:00.000Z"),
    ]
    # Outside a task run no Variable can be written: the report is still returned, with a warning.
    assert "a retry may request it again" in caplog.text


def test_quota_429_fails_the_task_with_the_quota_message(sandbox: ClaritySandbox) -> None:
    sandbox.quota_per_day = 0
    with pytest.raises(
        ClarityQuotaExceededError, match="about 30 historical reports per organization per day"
    ):
        operator(**WINDOW).execute(context={})  # type: ignore[arg-type]
    assert posts(sandbox) == 1


def test_waiting_in_the_worker(sandbox: ClaritySandbox) -> None:
    op = operator(wait_for_completion=True, deferrable=False, poll_interval=0.1, reuse_existing_report=False)
    report_id = op.execute(context={})  # type: ignore[arg-type]
    assert sandbox.report(report_id)["reportStatus"] == "succeeded"
    sandbox.fail_next_reports(1, message="Report generation failed: no subscription")
    with pytest.raises(ClarityReportFailedError, match="no subscription"):
        op.execute(context={})  # type: ignore[arg-type]
    sandbox.report_delay = 3600
    op = operator(wait_for_completion=True, deferrable=False, poll_interval=0.1, timeout=0.3, **WINDOW)
    with pytest.raises(AirflowException, match="did not finish within") as info:
        op.execute(context={})  # type: ignore[arg-type]
    assert not isinstance(info.value, AirflowSensorTimeout)  # a plain failure: the retry reuses the report


def test_deferring_and_resuming(sandbox: ClaritySandbox) -> None:
    op = operator(wait_for_completion=True, poll_interval=5, timeout=timedelta(minutes=10), **WINDOW)
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context={})  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, ClarityReportTrigger)
    (report,) = sandbox.reports
    assert (trigger.report_id, trigger.org, trigger.poll_interval) == (report["reportId"], sandbox.org, 5.0)
    assert before + 600 <= trigger.end_time <= time.time() + 600
    assert sandbox.api_key not in json.dumps(trigger.serialize()[1])

    success = {
        "status": "success",
        "report_id": report["reportId"],
        "message": "Ready",
        "report_status": "succeeded",
    }
    assert op.execute_complete(context={}, event=success) == report["reportId"]  # type: ignore[arg-type]
    for event, error in [
        (None, AirflowException),
        ({"status": "done", "report_id": "JB1"}, AirflowException),
        ({"status": "failed", "report_id": "JB1", "message": "bad"}, ClarityReportFailedError),
        ({"status": "error", "report_id": "JB1", "message": "HTTP 401"}, AirflowException),
    ]:
        with pytest.raises(error):
            op.execute_complete(context={}, event=event)  # type: ignore[arg-type]
    timeout = {"status": "timeout", "report_id": "JB1", "message": "still in progress"}
    with pytest.raises(AirflowException, match="still in progress") as info:
        op.execute_complete(context={}, event=timeout)  # type: ignore[arg-type]
    assert not isinstance(info.value, AirflowSensorTimeout)


# -- real task runs (dag.test, trigger inline) -------------------------------------------------------------
def run_dag(dag_id: str, **op_kwargs: Any) -> Any:
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False) as dag:
        operator(**{**WINDOW, **op_kwargs})
    return run_dag_test(dag)


def request_result(dag_run: Any) -> tuple[str, int, Any]:
    return task_result(dag_run, "request")


def stored_refs() -> dict[str, dict[str, Any]]:
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Variable).where(Variable.key.like("clarity_report_%"))).all()
        return {row.key: json.loads(row.val) for row in rows}


@pytest.mark.usefixtures("airflow_db")
def test_a_retried_task_reuses_its_report(sandbox: ClaritySandbox) -> None:
    # The first try requests the report, then its wait fails (HTTP 401 on the first poll, not retried).
    sandbox.api.faults.fail_next(1, status=401, path="/v2/report-request/")
    dag_run = run_dag(
        "clarity_retry_reuses",
        wait_for_completion=True,
        poll_interval=0.1,
        retries=1,
        retry_delay=timedelta(0),
    )
    state, try_number, report_id = request_result(dag_run)
    assert (state, try_number) == ("success", 2)
    assert [r["reportId"] for r in sandbox.reports] == [report_id]
    assert posts(sandbox) == 1
    assert sandbox.api.requests[1].status == 401  # the first try did fail after requesting
    (ref,) = [v for v in stored_refs().values() if v["reportId"] == report_id]
    assert pendulum.parse(ref["requested_at"]) <= pendulum.now("UTC")
    rendered = rendered_fields(dag_run)
    assert WINDOW["start_time"] in rendered  # the rendered fields were stored...
    assert sandbox.api_key not in rendered + json.dumps(report_id)  # ...without the key


@pytest.mark.usefixtures("airflow_db")
def test_later_runs_reuse_unless_failed_too_old_or_switched_off(sandbox: ClaritySandbox) -> None:
    first = request_result(run_dag("clarity_reuse_across_runs"))[2]
    again = request_result(run_dag("clarity_reuse_across_runs"))[2]
    assert again == first
    assert len(sandbox.reports) == 1

    sandbox.fail_next_reports(1)
    failed = request_result(run_dag("clarity_reuse_failed", output_frequency="day"))[2]
    sandbox.set_ready(failed)
    assert sandbox.report(failed)["reportStatus"] == "failed"
    replacement = request_result(run_dag("clarity_reuse_failed", output_frequency="day"))[2]
    assert replacement != failed

    young = request_result(run_dag("clarity_reuse_old", output_frequency="minute", reuse_max_age=0.5))[2]
    time.sleep(0.6)
    older = request_result(run_dag("clarity_reuse_old", output_frequency="minute", reuse_max_age=0.5))[2]
    assert older != young

    off = [
        request_result(run_dag("clarity_reuse_off", reuse_existing_report=False, file_format="parquet"))[2]
        for _ in range(2)
    ]
    assert off[0] != off[1]
    assert len(sandbox.reports) == 7
    assert posts(sandbox) == 7


@pytest.mark.usefixtures("airflow_db")
def test_a_lost_answer_fails_at_once_and_reruns_wait_for_a_decision(
    sandbox: ClaritySandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    from airflow.models.variable import Variable  # the database model: this test is outside a task run

    # Clarity creates the report, but its answer breaks off half-way.
    sandbox.api.faults.truncate_next(1, path="/v2/report-requests")
    kwargs: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(0)}
    state, try_number, _ = request_result(run_dag("clarity_lost_answer", **kwargs))
    assert (state, try_number) == ("failed", 1)  # no task retry: it could only spend quota again
    assert len(sandbox.reports) == 1
    assert posts(sandbox) == 1
    # (Variables of earlier tests may remain: the metadata database is shared by the session.)
    ((key, mark),) = [(k, v) for k, v in stored_refs().items() if v["reportId"] is None]

    # A rerun of the same report stops before any request, naming the Variable.
    capfd.readouterr()
    assert request_result(run_dag("clarity_lost_answer", **kwargs))[:2] == ("failed", 1)
    assert posts(sandbox) == 1
    output = capfd.readouterr()
    errors = [line for line in (output.out + output.err).splitlines() if "an earlier try sent it at" in line]
    assert errors
    assert ClarityReportRequestUncertainError.__name__ in errors[0]
    assert key in errors[0] or key in output.out + output.err

    # Told the id, the rerun uses that report; with the Variable deleted, it requests a new one.
    report_id = sandbox.reports[0]["reportId"]
    Variable.set(key, json.dumps({"reportId": report_id, "requested_at": mark["requested_at"]}))
    assert request_result(run_dag("clarity_lost_answer", **kwargs))[:3] == ("success", 1, report_id)
    assert posts(sandbox) == 1
    Variable.delete(key)
    state, _, fresh = request_result(run_dag("clarity_lost_answer", **kwargs))
    assert state == "success"
    assert fresh != report_id
    assert posts(sandbox) == 2
