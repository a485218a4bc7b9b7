"""The campaign's own instruments: scripted faults, expected points, the secret scan and the page writer."""

from __future__ import annotations

import re

import pyarrow as pa
import requests
from faults_support import (
    MatrixRow,
    PointCheck,
    ScriptedFaults,
    compare_points,
    exception_lines,
    expected_points,
    normalise,
    render_reliability,
    secret_hits,
)

from airflow_provider_clarify.testing.clarify import ClarifySandbox


def test_scripted_faults_act_on_the_nth_matching_request() -> None:
    with ClarifySandbox() as clarify:
        plan = ScriptedFaults()
        clarify.faults = plan
        plan.on_request(2, lambda: plan.fail_next(1, status=503), path="/v1/rpc")
        statuses = [requests.post(clarify.url + "rpc", timeout=5).status_code for _ in range(3)]
        token = requests.post(clarify.url + "oauth/token", timeout=5).status_code
    # The first call is answered by the sandbox (401, no credentials), the second by the armed fault.
    assert statuses == [401, 503, 401]
    assert token == 400  # another path: not counted, not faulted


def test_expected_points_skip_empty_and_invalid_values() -> None:
    table = pa.table(
        {
            "datasourceId": ["D1", "D1"],
            "startOfPeriod": ["2026-01-14T00:00:00.000Z", "2026-01-14T01:00:00.000Z"],
            "pm2_5ConcMass1HourMean.qcAssessment": ["valid", "invalid"],
            "pm2_5ConcMass1HourMean.raw": ["9.1", "8.0"],
            "pm2_5ConcMass1HourMean.value": ["7.5", "6.9"],
            "no2Conc1HourMean.value": [None, "10.25"],
        }
    )
    assert expected_points(table) == {
        ("D1.pm2_5ConcMass1HourMean", "2026-01-14T00:00:00+00:00"): 7.5,
        ("D1.no2Conc1HourMean", "2026-01-14T01:00:00+00:00"): 10.25,
    }


def test_compare_points_tells_missing_extra_wrong_and_resent() -> None:
    expected = {("a", "t1"): 1.0, ("a", "t2"): 2.0, ("b", "t1"): 3.0}
    stored = {("a", "t1"): 1.0, ("a", "t2"): 2.5, ("c", "t1"): 4.0}
    assert compare_points(expected, stored, sent=5) == PointCheck(
        expected=3, missing=1, extra=1, wrong=1, resent=2
    )


def test_secret_scan_and_exception_lines() -> None:
    texts = {"task output": "token=abc123secret\nValueError: data: bad", "XCom": "{}"}
    assert secret_hits(texts, {"OAuth token": "abc123secret", "API key": "zzz"}) == [
        "OAuth token in task output"
    ]
    assert exception_lines(texts["task output"]) == ["ValueError: data: bad"]
    assert normalise("report JBAB12CD34 at http://127.0.0.1:4711/x 2026-01-14T00:00:00.000Z: \x0f") == (
        "report <report> at <sandbox>/x <time>: ?"
    )
    assert normalise("x" * 300, limit=10) == "xxxxxxxxx…"


def test_the_page_lists_every_row_in_campaign_order_and_the_open_bugs() -> None:
    rows = [
        MatrixRow(
            order=1,
            fault="second | fault",
            step="poll",
            outcome="failed: X*Y of <report>",
            points=None,
            reports=1,
        ),
        MatrixRow(
            order=0,
            fault="first",
            step="insert",
            outcome="success",
            points=PointCheck(expected=10, missing=0, extra=0, wrong=0, resent=4),
            reports=2,
            tries={"load": 2},
            bug="quota spent twice",
        ),
    ]
    page = render_reliability(rows, command="make it", versions="Airflow 9")
    assert page.index("| first |") < page.index("| second \\| fault |")
    assert "failed: X\\*Y of \\<report\\>" in page  # Markdown and HTML characters stay literal
    assert "0 of 10" in page
    assert "load 2" in page
    assert "**open bug**, see below" in page
    assert "## Open bugs" in page
    assert "- **first**: quota spent twice" in page
    assert "```sh\nmake it\n```" in page
    assert "Secret values found over all runs: **0**." in page
    # Every line of the pipe table has the header's 8 cells (an escaped pipe does not split a cell).
    table = [line for line in page.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(rows)
    assert {len(re.split(r"(?<!\\)\|", line)) - 2 for line in table} == {8}
