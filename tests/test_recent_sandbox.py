"""The Clarity sandbox's recent-measurements endpoints over plain HTTP: query, continuation, tokens, cache.

Everything here talks to the sandbox with ``requests`` only (no provider client code), on the sandbox's
recent clock, which the tests set and move so that measurements "arrive" deterministically.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import pytest
import requests

from airflow_provider_clarify.testing.clarity import ClaritySandbox

if TYPE_CHECKING:
    from collections.abc import Iterator

QUERY = "/v2/recent-datasource-measurements-query"
CONTINUATION = "/v2/recent-datasource-measurements-continuation"
TOKEN = "x-clarity-continuation-token"
T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
LAG = timedelta(minutes=2)


@pytest.fixture
def clarity() -> Iterator[ClaritySandbox]:
    with ClaritySandbox(report_delay=0.0) as server:
        server.recent_now = T0
        yield server


def post(clarity: ClaritySandbox, path: str, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(
        clarity.url + path,
        json=body,
        headers={"x-api-key": clarity.api_key, "Accept-Encoding": "gzip", **headers},
        timeout=30,
    )


def query(clarity: ClaritySandbox, **fields: Any) -> requests.Response:
    body: dict[str, Any] = {"org": clarity.org, "datasourceIds": clarity.datasource_ids[:2]}
    body.update(fields)
    return post(clarity, QUERY, {k: v for k, v in body.items() if v is not None})


def cont(clarity: ClaritySandbox, token: str, org: str | None = None) -> requests.Response:
    return post(clarity, CONTINUATION, {"org": org or clarity.org, "continuationToken": token})


def times(response: requests.Response) -> list[datetime]:
    return [datetime.fromisoformat(e["time"]) for e in response.json()["data"]]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- query ---------------------------------------------------------------------------------------------
def test_json_long_answer_shape(clarity: ClaritySandbox) -> None:
    start = T0 - timedelta(minutes=30)
    response = query(
        clarity, startTime=iso(start), qcAssessment=True, qcFlags=True, replyWithContinuationToken=True
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    answer = response.json()
    assert answer["request"] == {
        "org": clarity.org,
        "datasourceIds": clarity.datasource_ids[:2],
        "outputFrequency": "minute",
        "format": "json-long",
        "startTime": iso(start),
        "qcAssessment": True,
        "qcFlags": True,
        "replyWithContinuationToken": True,
    }
    data = answer["data"]
    assert len(data) > 100
    assert {tuple(sorted(e)) for e in data} == {
        ("datasourceId", "metric", "qcAssessment", "qcFlags", "raw", "status", "time", "value")
    }
    stamps = times(response)
    assert stamps == sorted(stamps, reverse=True)  # time-descending
    assert min(stamps) >= start
    assert max(stamps) < T0 - LAG  # readings become visible 2 minutes after they were taken
    assert {e["datasourceId"] for e in data} == set(clarity.datasource_ids[:2])
    assert all(isinstance(e["qcFlags"], list) for e in data)
    assert {e["qcAssessment"] for e in data} <= {"valid", "invalid"}
    assert any(e["value"] is None and e["raw"] is not None for e in data)  # e.g. calibration missing
    fleet = {d.datasource_id: d for d in clarity.fleet()}
    assert answer["locations"] == [
        {"datasourceId": i, "lat": fleet[i].latitude, "lon": fleet[i].longitude}
        for i in clarity.datasource_ids[:2]
    ]
    assert response.headers[TOKEN]
    assert parsedate_to_datetime(response.headers["Date"]) == T0  # the recent clock, not the real one


def test_no_token_unless_asked_and_format_defaults(clarity: ClaritySandbox) -> None:
    response = query(clarity)
    assert response.status_code == 200
    assert TOKEN not in response.headers
    assert response.json()["request"]["format"] == "json-long"
    assert response.json()["request"]["outputFrequency"] == "minute"
    assert "qcAssessment" not in response.json()["data"][0]


def test_csv_wide_has_the_report_layout(clarity: ClaritySandbox) -> None:
    response = query(clarity, format="csv-wide", outputFrequency="hour", qcAssessment=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    header = rows[0]
    assert header[:8] == [
        "datasourceId",
        "sourceId",
        "sourceType",
        "outputFrequency",
        "startOfPeriod",
        "endOfPeriod",
        "locationLatitude",
        "locationLongitude",
    ]
    assert header[8:12] == [
        "no2Conc1HourMean.qcAssessment",
        "no2Conc1HourMean.raw",
        "no2Conc1HourMean.status",
        "no2Conc1HourMean.value",
    ]
    starts = {datetime.fromisoformat(r[4]) for r in rows[1:]}
    # 48 hours of cache; a period is visible after its end plus the ingest lag.
    assert min(starts) == T0 - timedelta(hours=48)
    assert max(starts) == T0 - timedelta(hours=2)
    assert len(rows) - 1 == 2 * 47


def test_values_match_the_report_for_the_same_readings(clarity: ClaritySandbox) -> None:
    start, end = T0 - timedelta(hours=2), T0 - timedelta(hours=1)
    ids = clarity.datasource_ids[:2]
    recent = query(clarity, datasourceIds=ids, startTime=iso(start)).json()["data"]
    record = post(
        clarity,
        "/v2/report-requests",
        {
            "org": clarity.org,
            "report": "datasource-measurements",
            "datasourceIds": ids,
            "outputFrequency": "minute",
            "startTime": iso(start),
            "endTime": iso(end),
        },
    ).json()
    table = clarity.report_table(record["reportId"]).to_pylist()
    report_cells = {
        (row["datasourceId"], row["time"], column.rsplit(".", 1)[0]): (
            float(value),
            row[column.rsplit(".", 1)[0] + ".value"],
        )
        for row in table
        for column, value in row.items()
        if column.endswith(".raw") and value is not None
    }
    in_window = [e for e in recent if e["time"] < iso(end)]
    assert len(in_window) == len(report_cells) > 100
    for entry in in_window:
        raw, value = report_cells[(entry["datasourceId"], entry["time"], entry["metric"])]
        assert entry["raw"] == raw
        assert entry["value"] == (None if value is None else float(value))


@pytest.mark.parametrize(("frequency", "window"), [("minute", 24), ("hour", 48), ("day", 240)])
def test_cache_windows_trim_old_start_times(clarity: ClaritySandbox, frequency: str, window: int) -> None:
    everything = query(clarity, outputFrequency=frequency)
    older = query(clarity, outputFrequency=frequency, startTime=iso(T0 - timedelta(days=30)))
    assert older.status_code == everything.status_code == 200
    assert older.json()["data"] == everything.json()["data"]  # an older startTime is trimmed silently
    assert min(times(everything)) >= T0 - timedelta(hours=window)
    period = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}[frequency]
    assert min(times(everything)) < T0 - timedelta(hours=window) + period


def test_readings_become_visible_after_the_ingest_lag(clarity: ClaritySandbox) -> None:
    start = iso(T0 - timedelta(minutes=10))
    before = times(query(clarity, startTime=start))
    clarity.advance_recent_clock(timedelta(minutes=1))
    after = times(query(clarity, startTime=start))
    assert max(before) < T0 - LAG <= max(after) < T0 + timedelta(minutes=1) - LAG
    assert set(before) < set(after)


def test_gzip_when_asked(clarity: ClaritySandbox) -> None:
    gzipped = query(clarity, startTime=iso(T0 - timedelta(minutes=5)))
    assert gzipped.headers["Content-Encoding"] == "gzip"
    plain = post(
        clarity, QUERY, {"org": clarity.org, "allDatasources": True}, **{"Accept-Encoding": "identity"}
    )
    assert "Content-Encoding" not in plain.headers
    assert [r.info.get("gzip", False) for r in clarity.recent_calls("query")] == [True, False]


# -- continuation -------------------------------------------------------------------------------------
def test_continuation_returns_only_what_arrived_and_each_token_works_once(clarity: ClaritySandbox) -> None:
    first = query(clarity, startTime=iso(T0 - timedelta(hours=1)), replyWithContinuationToken=True)
    nothing_new = cont(clarity, first.headers[TOKEN])
    assert nothing_new.status_code == 200
    assert nothing_new.json()["data"] == []
    assert "locations" not in nothing_new.json()  # absent when there is no new data
    assert nothing_new.json()["request"] == first.json()["request"]
    clarity.advance_recent_clock(timedelta(minutes=15))
    second = cont(clarity, nothing_new.headers[TOKEN])
    new = times(second)
    assert len(new) > 50
    assert min(new) >= T0 - LAG > max(times(first))
    assert max(new) < T0 + timedelta(minutes=15) - LAG
    # Together they are exactly what a query asks for now.
    again = query(clarity, startTime=iso(T0 - timedelta(hours=1)))
    key = ("datasourceId", "time", "metric")
    combined = {tuple(e[k] for k in key) for e in first.json()["data"] + second.json()["data"]}
    assert combined == {tuple(e[k] for k in key) for e in again.json()["data"]}
    assert len(combined) == len(first.json()["data"]) + len(second.json()["data"])

    # Strict: a token works once (whether Clarity's do is unconfirmed).
    used = cont(clarity, nothing_new.headers[TOKEN])
    assert used.status_code == 400
    assert used.json() == {
        "message": ["continuationToken was already used; continue with the token of the latest answer"]
    }
    assert cont(clarity, second.headers[TOKEN]).status_code == 200
    assert len(clarity.recent_calls("query")) == 2
    assert len(clarity.recent_calls("continuation")) == 4
    assert clarity.reports == []  # no report quota spent


def test_hour_periods_arrive_after_their_end(clarity: ClaritySandbox) -> None:
    clarity.recent_now = T0 + timedelta(minutes=30)
    first = query(
        clarity,
        outputFrequency="hour",
        startTime=iso(T0 - timedelta(hours=3)),
        replyWithContinuationToken=True,
    )
    assert max(times(first)) == T0 - timedelta(hours=1)  # [11:00, 12:00) is ready at 12:00 + lag
    clarity.recent_now = T0 + timedelta(hours=1, minutes=1)  # 13:01: [12:00, 13:00) is ready at 13:02
    early = cont(clarity, first.headers[TOKEN])
    assert early.json()["data"] == []
    clarity.recent_now = T0 + timedelta(hours=1, minutes=3)
    late = cont(clarity, early.headers[TOKEN])
    assert set(times(late)) == {T0}
    assert {e["datasourceId"] for e in late.json()["data"]} == set(clarity.datasource_ids[:2])


def test_tokens_expire_24_hours_after_issue(clarity: ClaritySandbox) -> None:
    first = query(clarity, replyWithContinuationToken=True)
    clarity.advance_recent_clock(timedelta(hours=23, minutes=59))
    second = cont(clarity, first.headers[TOKEN])
    assert second.status_code == 200  # renewed on every call
    clarity.advance_recent_clock(timedelta(hours=24))
    expired = cont(clarity, second.headers[TOKEN])
    assert expired.status_code == 400
    (message,) = expired.json()["message"]
    assert message.startswith("continuationToken has expired")
    assert second.headers[TOKEN] not in message
    assert parsedate_to_datetime(expired.headers["Date"]) == clarity.recent_now


def test_expire_switch_unknown_token_and_other_org(clarity: ClaritySandbox) -> None:
    first = query(clarity, replyWithContinuationToken=True)
    token = first.headers[TOKEN]
    other = cont(clarity, token, org="sandboxOrg3C4D")
    assert other.status_code == 400
    assert "not valid" in other.json()["message"][0]
    assert cont(clarity, "no-such-token-123").status_code == 400
    clarity.expire_continuation_tokens()
    refused = cont(clarity, token)
    assert refused.status_code == 400
    assert "expired" in refused.json()["message"][0]
    assert clarity.continuation_tokens == [token]


def test_reset_forgets_tokens_and_the_clock(clarity: ClaritySandbox) -> None:
    token = query(clarity, replyWithContinuationToken=True).headers[TOKEN]
    clarity.reset()
    assert clarity.recent_calls() == []
    assert clarity.continuation_tokens == []
    assert abs(clarity.recent_now - datetime.now(UTC)) < timedelta(minutes=1)
    assert cont(clarity, token).status_code == 400


# -- validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nodeIds": ["AAAAAAAA"]}, "nodeIds: recent measurements are served for datasources only"),
        ({"endTime": "2030-06-01T00:00:00Z"}, "endTime is not accepted"),
        ({"format": "parquet-wide"}, "format must be one of json-long, csv-wide"),
        ({"outputFrequency": "week"}, "outputFrequency must be one of minute, hour, day"),
        ({"startTime": "2030-06-01T00:00:00"}, "startTime must include a time zone"),
        ({"replyWithContinuationToken": "yes"}, "replyWithContinuationToken must be a boolean"),
        ({"datasourceIds": None}, "datasourceIds is required"),
        ({"allDatasources": True}, "datasourceIds and allDatasources: true are mutually exclusive"),
        ({"datasourceIds": ["DNOPE0000"]}, "datasourceIds contains ids unknown to org"),
        ({"colour": "red"}, "unknown field(s): colour"),
        ({"metricSelect": "pm2_5*"}, "metricSelect must look like"),
    ],
)
def test_invalid_queries_are_400(clarity: ClaritySandbox, changes: dict[str, Any], message: str) -> None:
    response = query(clarity, **changes)
    assert response.status_code == 400
    assert any(m.startswith(message) for m in response.json()["message"]), response.json()


def test_auth_org_and_body_checks(clarity: ClaritySandbox) -> None:
    bad_key = requests.post(
        clarity.url + QUERY, json={"org": clarity.org}, headers={"x-api-key": "nope"}, timeout=30
    )
    assert bad_key.status_code == 401
    assert bad_key.json() == {"message": ["Unauthorized user"]}
    assert query(clarity, org="strangerOrg9Z9Z").status_code == 403
    assert post(clarity, CONTINUATION, {"org": clarity.org}).json() == {
        "message": ["continuationToken is required"]
    }
    extra = post(clarity, CONTINUATION, {"org": clarity.org, "continuationToken": "x", "format": "csv-wide"})
    assert extra.status_code == 400
    assert requests.post(
        clarity.url + QUERY, data=b"[1]", headers={"x-api-key": clarity.api_key}, timeout=30
    ).json() == {"message": ["request body must be a JSON object"]}


def test_all_datasources_and_metric_select(clarity: ClaritySandbox) -> None:
    response = post(
        clarity,
        QUERY,
        {
            "org": clarity.org,
            "allDatasources": True,
            "metricSelect": "only pm2_5ConcMassIndividual",
            "startTime": iso(T0 - timedelta(minutes=20)),
        },
    )
    data = response.json()["data"]
    assert response.json()["request"]["allDatasources"] is True
    assert {e["metric"] for e in data} == {"pm2_5ConcMassIndividual"}
    assert {e["datasourceId"] for e in data} == set(clarity.datasource_ids)  # nodes and reference sites


def test_recent_clock_setter() -> None:
    with ClaritySandbox() as clarity:
        assert abs(clarity.recent_now - datetime.now(UTC)) < timedelta(minutes=1)
        with pytest.raises(ValueError, match="timezone-aware"):
            clarity.recent_now = datetime(2030, 1, 1)
        moved = clarity.advance_recent_clock(timedelta(hours=2))
        assert moved - datetime.now(UTC) > timedelta(hours=1, minutes=59)
        assert clarity.recent_now == moved  # stands still once set
        clarity.recent_now = None
        assert abs(clarity.recent_now - datetime.now(UTC)) < timedelta(minutes=1)
    with pytest.raises(ValueError, match="continuation_token_ttl"):
        ClaritySandbox(continuation_token_ttl=timedelta(0))
    with pytest.raises(ValueError, match="recent_ingest_lag"):
        ClaritySandbox(recent_ingest_lag=timedelta(seconds=-1))
