"""ClarityRecentToClarifyOperator against both sandboxes, in real task runs (``dag.test()``, real Variables).

Task logs are read with ``structlog.testing.capture_logs`` (operators and hooks log through structlog inside
task runs, which pytest's log capture does not see). The Clarity sandbox's recent clock is set and moved by
the tests, so that measurements "arrive" between runs
deterministically. Expected points come straight from the sandbox's data generator (the ground truth the
sandbox serves), read here with plain Python -- not through the parser under test: a reading at ``t`` (an
hour period: at its end) is visible once the clock passed ``t + recent_ingest_lag``.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pendulum
import pytest
import structlog
from dag_helpers import rendered_fields, run_dag_test, task_result

from airflow_provider_clarify.exceptions import ClarityAPIError, ClarityQuotaExceededError
from airflow_provider_clarify.get_provider_info import get_provider_info
from airflow_provider_clarify.hooks import clarity as clarity_hook_module
from airflow_provider_clarify.hooks.clarity import ClarityHook
from airflow_provider_clarify.testing.clarify import ClarifySandbox
from airflow_provider_clarify.testing.clarity import ClaritySandbox
from airflow_provider_clarify.testing.reports import ReportSpec, iter_report_batches, to_text
from airflow_provider_clarify.transfers import clarity_recent_to_clarify as module
from airflow_provider_clarify.transfers.clarity_recent_to_clarify import ClarityRecentToClarifyOperator

if TYPE_CHECKING:
    from collections.abc import Iterator

Points = dict[str, dict[datetime, float]]
PM = "pm2_5ConcMassIndividual"
PERIODS = {"minute": timedelta(0), "hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass
class Env:
    clarify: ClarifySandbox
    clarity: ClaritySandbox
    t0: datetime

    def visible_until(self) -> datetime:
        return self.clarity.recent_now - self.clarity.recent_ingest_lag


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, airflow_db: None) -> Iterator[Env]:
    with ClarifySandbox(rate_limit=None) as clarify, ClaritySandbox(report_delay=0.0) as clarity:
        monkeypatch.setenv("AIRFLOW_CONN_CLARIFY_DEFAULT", clarify.connection_json())
        monkeypatch.setenv("AIRFLOW_CONN_CLARITY_DEFAULT", clarity.connection_json())
        t0 = datetime.now(UTC).replace(second=0, microsecond=0)
        clarity.recent_now = t0
        yield Env(clarify, clarity, t0)


def run(dag_id: str, *, logs: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
    """Run a one-task DAG (the operator with ``kwargs``); its log events are added to ``logs``."""
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False) as dag:
        ClarityRecentToClarifyOperator(task_id="sync", requests_per_second=None, **kwargs)
    with structlog.testing.capture_logs() as captured:
        dag_run = run_dag_test(dag)
    if logs is not None:
        logs.extend(captured)
    return dag_run


def text(logs: list[dict[str, Any]], level: str | None = None) -> str:
    """The log events (all their fields), one per line; only those of ``level`` when given."""
    return "\n".join(str(e) for e in logs if level is None or e.get("log_level") == level)


def result(dag_run: Any) -> dict[str, Any]:
    state, _, value = task_result(dag_run, "sync")
    assert state == "success", state
    assert isinstance(value, dict)
    return value


def expected(
    env: Env,
    start: datetime,
    until: datetime,
    *,
    frequency: str = "minute",
    ids: list[str] | None = None,
    attributes: tuple[str, ...] = ("value",),
    ready_from: datetime | None = None,
) -> Points:
    """The points of readings with time >= ``start`` that are ready (visible) in ``[ready_from, until)``."""
    sources = tuple(d for d in env.clarity.fleet() if ids is None or d.datasource_id in ids)
    spec = ReportSpec(
        report="datasource-measurements",
        output_frequency=frequency,
        start=start,
        end=until + timedelta(days=2),
        sources=sources,
        qc_assessment=True,
    )
    template = "{id}.{metric}.{attribute}" if len(attributes) > 1 else "{id}.{metric}"
    out: Points = defaultdict(dict)
    for batch in iter_report_batches(spec):
        for row in to_text(batch).to_pylist():
            moment = datetime.fromisoformat(row.get("time") or row["startOfPeriod"])
            ready = moment + PERIODS[frequency]
            if ready >= until or (ready_from is not None and ready < ready_from):
                continue
            for metric in spec.metrics:
                if row[f"{metric}.qcAssessment"] == "invalid":
                    continue
                for attribute in attributes:
                    cell = row[f"{metric}.{attribute}"]
                    if cell is not None:
                        out[template.format(id=row["datasourceId"], metric=metric, attribute=attribute)][
                            moment
                        ] = float(cell)
    return dict(out)


def merged(*parts: Points) -> Points:
    out: Points = defaultdict(dict)
    for part in parts:
        for key, points in part.items():
            out[key].update(points)
    return dict(out)


def count(points: Points) -> int:
    return sum(len(p) for p in points.values())


def assert_clarify_holds(env: Env, want: Points) -> None:
    """Clarify holds exactly these points: every key, every time once, every value."""
    assert set(env.clarify.signals()) == set(want)
    for key, points in want.items():
        assert env.clarify.points(key) == dict(sorted(points.items())), key


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def stored_state(dag_id: str) -> dict[str, Any]:
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Variable).where(Variable.key.like(f"{module.VARIABLE_PREFIX}%"))).all()
        found = [json.loads(r.val) for r in rows if (r.description or "").find(f"{dag_id}.sync") >= 0]
    (state,) = found
    return state


# -- the operator's surface ----------------------------------------------------------------------------
def test_signature_templates_and_registration() -> None:
    signature = inspect.signature(ClarityRecentToClarifyOperator.__init__)
    parameters = [p for name, p in signature.parameters.items() if name not in ("self", "kwargs")]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
    assert signature.parameters["clarity_conn_id"].default == "clarity_default"
    assert signature.parameters["clarify_conn_id"].default == "clarify_default"
    operator = ClarityRecentToClarifyOperator(task_id="t", all_datasources=True)
    for name in operator.template_fields:
        assert hasattr(operator, name), name
    assert {"datasource_ids", "start_time", "org", "integration_id"} <= set(operator.template_fields)
    assert operator.max_active_tis_per_dag == 1
    modules = [t["python-module"] for t in get_provider_info()["transfers"]]
    assert "airflow_provider_clarify.transfers.clarity_recent_to_clarify" in modules


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "datasource_ids: recent measurements need a list"),
        ({"all_datasources": True, "output_frequency": "week"}, "output_frequency must be one of"),
        ({"all_datasources": True, "response_format": "parquet"}, "response_format: 'parquet' is not one of"),
        ({"all_datasources": True, "start_time": "soon"}, "start_time: 'soon' is not an ISO 8601 time"),
        ({"all_datasources": True, "metrics": ["PM 2.5"]}, r"metrics\[0\]: 'PM 2.5' is not a canonical"),
        ({"all_datasources": True, "attributes": "status"}, "attributes: status are not numeric"),
        (
            {"all_datasources": True, "response_format": "json-long", "key_template": "{source_id}.{metric}"},
            "json-long answers do not carry",
        ),
        ({"all_datasources": True, "recovery_overlap": -1}, "recovery_overlap: expected a timedelta"),
        ({"all_datasources": True, "max_request_bytes": 9 << 20}, "max_request_bytes"),
        ({"datasource_ids": ["DAAAA1111", ""]}, r"datasource_ids\[1\]"),
    ],
)
def test_bad_input_fails_before_any_request(env: Env, kwargs: dict[str, Any], message: str) -> None:
    operator = ClarityRecentToClarifyOperator(task_id="bad", **kwargs)
    with pytest.raises(ValueError, match=message):
        operator.execute(context={})  # type: ignore[arg-type]
    assert env.clarity.api.requests == []
    assert env.clarify.requests == []


# -- runs after runs -----------------------------------------------------------------------------------
def test_three_runs_load_every_point_exactly_once(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logs: list[dict[str, Any]] = []
    origin = env.t0 - timedelta(hours=1)
    results, runs, boundaries = [], [], [origin]
    for number in range(3):
        if number:
            env.clarity.advance_recent_clock(timedelta(minutes=15))
        dag_run = run("recent_three_runs", logs=logs, all_datasources=True, start_time=iso(origin))
        runs.append(dag_run)
        results.append(result(dag_run))
        boundaries.append(env.visible_until())

    assert [r["mode"] for r in results] == ["query", "continuation", "continuation"]
    # Each run loaded exactly what became visible since the run before.
    for number, res in enumerate(results):
        arrived = expected(
            env, origin, boundaries[number + 1], ready_from=boundaries[number] if number else None
        )
        assert res["points"] == count(arrived) > 0
        assert res["loaded_from"] >= iso(boundaries[number])  # boundaries[0] is the first start
        assert res["loaded_through"] < iso(boundaries[number + 1])
        assert res["lost_period"] is None
    everything = expected(env, origin, boundaries[-1])
    assert sum(r["points"] for r in results) == count(everything)  # nothing sent twice...
    assert_clarify_holds(env, everything)  # ...nothing missed, every value right
    assert results[0]["queried_from"] == iso(origin)
    assert results[1]["queried_from"] is None

    assert env.clarity.reports == []  # not one report spent
    assert [r.info["recent"] for r in env.clarity.recent_calls()] == ["query", "continuation", "continuation"]
    assert all(r.headers.get("Accept-Encoding") == "gzip" for r in env.clarity.recent_calls())
    # The signals carry the report transfer's metadata.
    signal = env.clarify.signal(f"{env.clarity.datasource_ids[0]}.{PM}")
    assert signal["name"] == f"PM2.5 mass concentration — {env.clarity.datasource_ids[0]}"
    assert signal["labels"]["frequency"] == ["minute"]
    assert signal["labels"]["source"] == [env.clarity.fleet()[0].source_id]

    state = stored_state("recent_three_runs")
    assert state["token"] == env.clarity.continuation_tokens[-1]
    assert state["pending_since"] is None
    assert state["origin"] == iso(origin)
    assert state["last_loaded_time"] == results[-1]["loaded_through"]
    # The token never shows up in logs, XCom or rendered fields.
    assert "Clarity recent measurements loaded into Clarify" in text(logs)  # the logs were captured
    shown = text(logs) + caplog.text + json.dumps(results) + "".join(rendered_fields(r) for r in runs)
    for token in env.clarity.continuation_tokens:
        assert token not in shown
    assert env.clarity.api_key not in shown


def test_json_long_with_raw_and_value(env: Env) -> None:
    ids = env.clarity.datasource_ids[:3]
    origin = env.t0 - timedelta(minutes=40)
    options: dict[str, Any] = {
        "datasource_ids": ids,
        "response_format": "json-long",
        "attributes": ("raw", "value"),
        "start_time": iso(origin),
    }
    first = result(run("recent_json_long", **options))
    env.clarity.advance_recent_clock(timedelta(minutes=15))
    second = result(run("recent_json_long", **options))
    assert (first["mode"], second["mode"]) == ("query", "continuation")
    everything = expected(env, origin, env.visible_until(), ids=ids, attributes=("raw", "value"))
    assert first["points"] + second["points"] == count(everything)
    assert_clarify_holds(env, everything)
    assert {r.info["recent"] for r in env.clarity.recent_calls()} == {"query", "continuation"}
    assert env.clarity.reports == []


def test_a_try_that_fails_after_the_insert_is_retried_without_loss_or_doubles(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = env.t0 - timedelta(hours=1)
    options: dict[str, Any] = {
        "all_datasources": True,
        "start_time": iso(origin),
        "retries": 1,
        "retry_delay": timedelta(0),
    }
    result(run("recent_fail_after_insert", **options))
    env.clarity.advance_recent_clock(timedelta(minutes=15))

    # The second run's first try dies after Clarify accepted the insert, before the state moved on.
    save = ClarityRecentToClarifyOperator._save_state
    failures: list[int] = []

    def flaky_save(self: ClarityRecentToClarifyOperator, key: str, state: Any) -> None:
        if state.pending_since is None and not failures:
            failures.append(len(env.clarify.rpc_calls("integration.insert")))
            raise RuntimeError("worker lost after the insert")
        save(self, key, state)

    monkeypatch.setattr(ClarityRecentToClarifyOperator, "_save_state", flaky_save)
    logs: list[dict[str, Any]] = []
    dag_run = run("recent_fail_after_insert", logs=logs, **options)
    state, tries, second = task_result(dag_run, "sync")
    assert (state, tries) == ("success", 2)
    assert failures == [failures[0]]
    assert failures[0] > 0  # the first try had inserted before it failed
    assert second["mode"] == "recovery"
    assert "did not confirm them" in text(logs, "warning")
    # The spent token was not used again: the retry queried instead.
    assert [r.info["recent"] for r in env.clarity.recent_calls()] == ["query", "continuation", "query"]
    assert_clarify_holds(env, expected(env, origin, env.visible_until()))

    # And the stream goes on from the retry's token, loading only what is new.
    monkeypatch.setattr(ClarityRecentToClarifyOperator, "_save_state", save)
    before = env.visible_until()
    env.clarity.advance_recent_clock(timedelta(minutes=15))
    third = result(run("recent_fail_after_insert", **options))
    assert third["mode"] == "continuation"
    assert third["points"] == count(expected(env, origin, env.visible_until(), ready_from=before))
    assert_clarify_holds(env, expected(env, origin, env.visible_until()))
    assert env.clarity.reports == []


def test_an_insert_that_clarify_refuses_is_fetched_again_not_skipped(env: Env) -> None:
    # The continuation that fetched the data also moved the token chain on; continuing with the new token
    # would skip the data Clarify never stored. The pending marker makes the retry fetch it again.
    origin = env.t0 - timedelta(hours=1)
    options: dict[str, Any] = {
        "all_datasources": True,
        "start_time": iso(origin),
        "retries": 1,
        "retry_delay": timedelta(0),
    }
    result(run("recent_insert_refused", **options))
    before = env.visible_until()
    env.clarity.advance_recent_clock(timedelta(minutes=15))
    env.clarify.rpc_error_next(1, code=-32602, message="Invalid params")  # not retried by the hook
    state, tries, second = task_result(run("recent_insert_refused", **options), "sync")
    assert (state, tries) == ("success", 2)
    inserts = env.clarify.rpc_calls("integration.insert")
    refused = [c for c in inserts if c.fault == "rpc_error"]
    assert len(refused) == 1  # the first try failed on its first insert request
    assert inserts.index(refused[0]) > 0  # (after the first run's inserts)
    assert second["mode"] == "recovery"
    assert second["points"] >= count(expected(env, origin, env.visible_until(), ready_from=before)) > 0
    assert [r.info["recent"] for r in env.clarity.recent_calls()] == ["query", "continuation", "query"]
    assert_clarify_holds(env, expected(env, origin, env.visible_until()))


def test_a_try_that_dies_before_saving_anything_recovers_from_the_spent_token(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = env.t0 - timedelta(hours=1)
    options: dict[str, Any] = {
        "all_datasources": True,
        "start_time": iso(origin),
        "retries": 1,
        "retry_delay": timedelta(0),
    }
    result(run("recent_die_before_state", **options))
    env.clarity.advance_recent_clock(timedelta(minutes=15))
    save = ClarityRecentToClarifyOperator._save_state
    failures: list[str] = []

    def dying_save(self: ClarityRecentToClarifyOperator, key: str, state: Any) -> None:
        if not failures:  # the very first save of the run: right after Clarity answered
            failures.append(key)
            raise RuntimeError("worker lost before the state was saved")
        save(self, key, state)

    monkeypatch.setattr(ClarityRecentToClarifyOperator, "_save_state", dying_save)
    logs: list[dict[str, Any]] = []
    state, tries, second = task_result(run("recent_die_before_state", logs=logs, **options), "sync")
    assert (state, tries) == ("success", 2)
    assert second["mode"] == "recovery"
    warned = text(logs, "warning")
    assert "Clarity refused the continuation token" in warned
    assert "already used" in warned
    calls = env.clarity.recent_calls()
    assert [r.info["recent"] for r in calls] == ["query", "continuation", "continuation", "query"]
    assert calls[2].status == 400
    assert_clarify_holds(env, expected(env, origin, env.visible_until()))


def test_an_expired_token_recovers_without_loss_inside_the_cache_window(env: Env) -> None:
    # Hourly data is cached 48 h, tokens live 24 h: a sync that paused 30 h recovers everything.
    origin = env.t0 - timedelta(hours=6)
    options = {"all_datasources": True, "output_frequency": "hour", "start_time": iso(origin)}
    first = result(run("recent_expired_hour", **options))
    env.clarity.advance_recent_clock(timedelta(hours=30))
    logs: list[dict[str, Any]] = []
    second = result(run("recent_expired_hour", logs=logs, **options))
    assert (first["mode"], second["mode"]) == ("query", "recovery")
    warned = text(logs, "warning")
    assert "(older than 24 h: expired)" in warned
    assert "continuationToken has expired" in warned
    assert "querying from" in warned
    assert second["lost_period"] is None
    last_loaded = datetime.fromisoformat(first["loaded_through"])
    assert second["queried_from"] == iso(last_loaded - timedelta(minutes=15))
    assert_clarify_holds(env, expected(env, origin, env.visible_until(), frequency="hour"))
    signal = env.clarify.signal(f"{env.clarity.datasource_ids[0]}.pm2_5ConcMass1HourMean")
    assert signal["sampleInterval"] == "PT1H"
    assert env.clarity.reports == []


def test_a_token_the_worker_sees_expired_is_not_sent(env: Env) -> None:
    env.clarity.recent_now = env.t0 - timedelta(hours=30)
    origin = env.t0 - timedelta(hours=36)
    options = {"all_datasources": True, "output_frequency": "hour", "start_time": iso(origin)}
    result(run("recent_expired_locally", **options))
    env.clarity.recent_now = env.t0
    logs: list[dict[str, Any]] = []
    second = result(run("recent_expired_locally", logs=logs, **options))
    assert second["mode"] == "recovery"
    assert "has expired (tokens are valid 24 h)" in text(logs, "warning")
    assert [r.info["recent"] for r in env.clarity.recent_calls()] == ["query", "query"]  # no doomed call
    assert_clarify_holds(env, expected(env, origin, env.visible_until(), frequency="hour"))


def test_revoked_minute_token_recovers_inside_the_cache_window(env: Env) -> None:
    origin = env.t0 - timedelta(minutes=30)
    options = {"datasource_ids": env.clarity.datasource_ids[:2], "start_time": iso(origin)}
    result(run("recent_revoked", **options))
    env.clarity.advance_recent_clock(timedelta(hours=2))
    env.clarity.expire_continuation_tokens()
    second = result(run("recent_revoked", **options))
    assert (second["mode"], second["lost_period"]) == ("recovery", None)
    assert_clarify_holds(env, expected(env, origin, env.visible_until(), ids=env.clarity.datasource_ids[:2]))


def test_a_gap_beyond_the_cache_window_is_reported(env: Env) -> None:
    # Minute data is cached 24 h: after a 30 h pause, about 6 h are gone from the recent API.
    origin = env.t0 - timedelta(hours=1)
    ids = env.clarity.datasource_ids[:2]
    options = {"datasource_ids": ids, "start_time": iso(origin)}
    first = result(run("recent_gap", **options))
    first_until = env.visible_until()
    env.clarity.advance_recent_clock(timedelta(hours=30))
    logs: list[dict[str, Any]] = []
    second = result(run("recent_gap", logs=logs, **options))

    assert second["mode"] == "recovery"
    cache_edge = env.clarity.recent_now - timedelta(hours=24)
    resumed = cache_edge + timedelta(minutes=2)  # the query starts a little inside the cache
    assert second["queried_from"] == iso(resumed)
    assert second["lost_period"] == [first["loaded_through"], iso(resumed)]
    (lost,) = [e["event"] for e in logs if "cannot be loaded by this sync" in e["event"]]
    assert [e["log_level"] for e in logs if e["event"] == lost] == ["warning"]
    assert f"from {first['loaded_through']} to {iso(resumed)}" in lost
    assert "Clarity's cache of minute data reaches only 24 h back" in lost
    assert "ClarityRequestReportOperator(output_frequency='minute'" in lost
    assert f"start_time='{first['loaded_through']}', end_time='{iso(resumed)}'" in lost
    assert f"datasource_ids={ids!r}" in lost
    # Clarify holds the first run's points and everything from the resumed start on; nothing between.
    want = merged(
        expected(env, origin, first_until, ids=ids), expected(env, resumed, env.visible_until(), ids=ids)
    )
    assert_clarify_holds(env, want)
    gap_start = datetime.fromisoformat(first["loaded_through"])
    for key in want:
        assert not [t for t in env.clarify.points(key) if gap_start < t < resumed]
    assert env.clarity.reports == []


def test_a_first_start_older_than_the_cache_is_reported(env: Env) -> None:
    origin = env.t0 - timedelta(hours=30)
    logs: list[dict[str, Any]] = []
    first = result(
        run("recent_old_start", logs=logs, datasource_ids=env.clarity.datasource_ids[:1], start_time=origin)
    )
    queried_from = datetime.fromisoformat(first["queried_from"])
    edge = env.t0 - timedelta(hours=24)
    assert edge < queried_from < edge + timedelta(minutes=3)  # the query starts inside the cache
    assert first["lost_period"] == [iso(origin), first["queried_from"]]
    assert "ClarityRequestReportOperator(output_frequency='minute'" in text(logs, "warning")
    assert first["points"] == count(
        expected(env, queried_from, env.visible_until(), ids=env.clarity.datasource_ids[:1])
    )


def test_first_start_defaults_to_an_hour_back_and_metrics_narrow_the_query(env: Env) -> None:
    before = datetime.now(UTC)
    first = result(run("recent_defaults", all_datasources=True, metrics=[PM]))
    assert before - timedelta(hours=1, seconds=1) <= datetime.fromisoformat(first["queried_from"])
    assert datetime.fromisoformat(first["queried_from"]) <= datetime.now(UTC) - timedelta(minutes=59)
    assert {key.split(".", 1)[1] for key in env.clarify.signals()} == {PM}
    query = env.clarity.recent_calls("query")[0]
    assert query.info["rows"] > 0

    # Other query options (here the metrics) end the token chain: the next run queries again.
    env.clarity.advance_recent_clock(timedelta(minutes=15))
    second = result(run("recent_defaults", all_datasources=True, metrics=[PM, "no2ConcIndividual"]))
    assert second["mode"] == "recovery"
    assert any(key.endswith(".no2ConcIndividual") for key in env.clarify.signals())


# -- the hook --------------------------------------------------------------------------------------------
def test_hook_masks_tokens_and_follows_the_server_clock(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    masked: list[str] = []
    monkeypatch.setattr(clarity_hook_module, "mask_secret", masked.append)
    env.clarity.recent_now = env.t0 + timedelta(days=3)
    hook = ClarityHook(retry_backoff=0.01)
    answer = hook.query_recent_measurements(all_datasources=True, response_format="csv-wide")
    assert answer.token in masked
    assert answer.server_time == env.t0 + timedelta(days=3)
    assert abs(hook.server_time() - (env.t0 + timedelta(days=3))) < timedelta(seconds=5)
    assert answer.response_format == "csv-wide"
    assert answer.csv.startswith(b"datasourceId,sourceId,sourceType,outputFrequency,time,")
    assert answer.token is not None
    following = hook.continue_recent_measurements(answer.token)
    assert following.token in masked
    assert following.token != answer.token
    with pytest.raises(ClarityAPIError) as info:
        hook.continue_recent_measurements(answer.token)
    assert info.value.status == 400
    assert answer.token not in str(info.value)
    with pytest.raises(ValueError, match="token: expected"):
        hook.continue_recent_measurements(" ")
    assert len(env.clarity.recent_calls()) == 3


def test_hook_retries_a_429_on_recent_calls_as_a_rate_limit(env: Env) -> None:
    env.clarity.api.faults.throttle_next(1, retry_after=0, path="/v2/recent-datasource-measurements-query")
    answer = ClarityHook(retry_backoff=0.01).query_recent_measurements(
        datasource_ids=env.clarity.datasource_ids[:1]
    )
    assert not answer.empty
    assert [r.status for r in env.clarity.recent_calls()] == [429, 200]
    env.clarity.api.faults.throttle_next(5, retry_after=0, path="/v2/recent-datasource-measurements-query")
    with pytest.raises(ClarityAPIError) as info:
        ClarityHook(retry_attempts=2, retry_backoff=0.01).query_recent_measurements(all_datasources=True)
    assert info.value.status == 429
    assert not isinstance(info.value, ClarityQuotaExceededError)  # not the report quota
