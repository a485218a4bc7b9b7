"""The Clarity sandbox over real HTTP: API (auth, org, validation, quota, life cycle) and object store."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import urllib3

from airflow_provider_clarify.testing.clarity import ClaritySandbox
from airflow_provider_clarify.testing.reports import Datasource

if TYPE_CHECKING:
    from collections.abc import Iterator

DELETE = object()
FORBIDDEN_ORG = "strangerOrg9Z9Z"
OTHER_ORG = "sandboxOrg3C4D"
REPORT_ID = re.compile(r"JB[A-Z0-9]{8}")
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

# Canonical metric names, alphabetical (written out here, independently of the generator).
MINUTE_METRICS = [
    "atmPressureIndividual",
    "bcAllSourcesIndividual",
    "bcBiomassIndividual",
    "bcFossilFuelIndividual",
    "bcSpectralBIndividual",
    "bcSpectralGIndividual",
    "bcSpectralIRIndividual",
    "bcSpectralRIndividual",
    "bcSpectralUVIndividual",
    "no2ConcIndividual",
    "o3ConcIndividual",
    "pm10ConcMassIndividual",
    "pm10ConcNumIndividual",
    "pm1ConcMassIndividual",
    "pm1ConcNumIndividual",
    "pm2_5ConcMassIndividual",
    "pm2_5ConcNumIndividual",
    "relHumidAmbientIndividual",
    "relHumidInternalIndividual",
    "temperatureAmbientIndividual",
    "temperatureInternalIndividual",
    "windDirectionIndividual",
    "windSpeedIndividual",
]
HOUR_METRICS = [
    "no2Conc1HourMean",
    "no2Conc1HourMeanUsEpaAqi",
    "o3Conc1HourMean",
    "pm10ConcMass1HourMean",
    "pm10ConcMass24HourRollingMean",
    "pm2_5ConcMass1HourMean",
    "pm2_5ConcMass24HourRollingMean",
    "pm2_5ConcMassNowcast",
    "pm2_5ConcMassNowcastUsEpaAqi",
    "relHumidAmbient1HourMean",
    "relHumidInternal1HourMean",
    "temperatureAmbient1HourMean",
    "temperatureInternal1HourMean",
]
DAY_METRICS = [
    "no2Conc24HourMean",
    "o3Conc24HourMean",
    "pm10ConcMass24HourMean",
    "pm2_5ConcMass24HourMean",
    "pm2_5ConcMass24HourMeanUsEpaAqi",
    "relHumidInternal24HourMean",
    "temperatureInternal24HourMean",
]
METRICS = {"minute": MINUTE_METRICS, "hour": HOUR_METRICS, "day": DAY_METRICS}
WINDOWS = {
    "minute": ("2024-07-30T22:00:00Z", "2024-07-30T22:15:00Z"),
    "hour": ("2024-07-30T00:00:00Z", "2024-07-30T03:00:00Z"),
    "day": ("2024-07-28T00:00:00Z", "2024-07-30T00:00:00Z"),
}


@pytest.fixture
def clarity() -> Iterator[ClaritySandbox]:
    with ClaritySandbox(report_delay=0.0) as sandbox:
        yield sandbox


def body_for(sandbox: ClaritySandbox, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "org": sandbox.org,
        "report": "datasource-measurements",
        "outputFrequency": "hour",
        "startTime": "2024-07-30T00:00:00.000Z",
        "endTime": "2024-07-31T00:00:00.000Z",
        "datasourceIds": sandbox.datasource_ids[:2],
    }
    for key, value in (changes or {}).items():
        if value is DELETE:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def post(sandbox: ClaritySandbox, changes: dict[str, Any] | None = None, **kwargs: Any) -> requests.Response:
    headers = kwargs.pop("headers", {"x-api-key": sandbox.api_key})
    return requests.post(
        f"{sandbox.url}/v2/report-requests",
        json=body_for(sandbox, changes),
        headers=headers,
        timeout=10,
        **kwargs,
    )


def poll(
    sandbox: ClaritySandbox, report_id: str, *, plural: bool = False, **params: str
) -> requests.Response:
    path = "report-requests" if plural else "report-request"
    return requests.get(
        f"{sandbox.url}/v2/{path}/{report_id}",
        params=params,
        headers={"x-api-key": sandbox.api_key},
        timeout=30,
    )


def request_report(sandbox: ClaritySandbox, changes: dict[str, Any] | None = None) -> str:
    response = post(sandbox, changes)
    assert response.status_code == 202, response.text
    return str(response.json()["reportId"])


def wait_final(sandbox: ClaritySandbox, report_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        record: dict[str, Any] = poll(sandbox, report_id).json()
        if record["reportStatus"] != "in-progress":
            return record
        assert time.monotonic() < deadline, f"report {report_id} still in progress"
        time.sleep(0.05)


def ready_urls(sandbox: ClaritySandbox, changes: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    report_id = request_report(sandbox, changes)
    record = wait_final(sandbox, report_id)
    assert record["reportStatus"] == "succeeded"
    return report_id, record["urls"]


def raw_bytes(url: str) -> bytes:
    with requests.get(url, stream=True, timeout=30) as response:
        assert response.status_code == 200, response.text
        return bytes(response.raw.read(decode_content=False))


def csv_lines(url: str) -> list[list[str]]:
    text = gzip.decompress(raw_bytes(url)).decode()
    return list(csv.reader(io.StringIO(text)))


def file_name(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


# -- auth and org -----------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong-key"}])
def test_missing_or_wrong_api_key_is_401(clarity: ClaritySandbox, headers: dict[str, str]) -> None:
    for response in (
        post(clarity, headers=headers),
        requests.get(f"{clarity.url}/v2/report-request/JB00000000", headers=headers, timeout=10),
    ):
        assert response.status_code == 401
        assert response.json() == {"message": ["Unauthorized user"]}
        assert response.headers["access-control-allow-origin"] == "*"
    assert clarity.reports == []


def test_org_missing_is_400_and_foreign_org_is_403(clarity: ClaritySandbox) -> None:
    missing = post(clarity, {"org": DELETE})
    assert missing.status_code == 400
    assert missing.json() == {"message": ["org is required"]}
    not_string = post(clarity, {"org": 5})
    assert not_string.status_code == 400
    forbidden = post(clarity, {"org": FORBIDDEN_ORG})
    assert forbidden.status_code == 403
    assert FORBIDDEN_ORG in forbidden.json()["message"][0]
    assert clarity.reports == []


def test_other_permitted_org_has_its_own_fleet(clarity: ClaritySandbox) -> None:
    assert clarity.orgs == (clarity.org, OTHER_ORG)
    other_ids = [d.datasource_id for d in clarity.fleet(OTHER_ORG)]
    assert set(other_ids).isdisjoint(clarity.datasource_ids)
    assert post(clarity, {"org": OTHER_ORG, "datasourceIds": other_ids[:1]}).status_code == 202
    wrong_fleet = post(clarity, {"org": OTHER_ORG})  # the default org's ids
    assert wrong_fleet.status_code == 400
    assert OTHER_ORG in wrong_fleet.json()["message"][0]


# -- validation -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"report": "weather-measurements"}, "report must be one of"),
        ({"report": DELETE}, "report is required"),
        ({"outputFrequency": "second"}, "outputFrequency must be one of"),
        ({"outputFrequency": DELETE}, "outputFrequency is required"),
        ({"startTime": DELETE}, "startTime is required"),
        ({"startTime": "yesterday"}, "startTime is not an ISO 8601 time"),
        ({"startTime": "2024-07-30T00:00:00"}, "startTime must include a time zone"),
        ({"endTime": 1722384000}, "endTime must be an ISO 8601 string"),
        ({"endTime": "2024-07-30T00:00:00Z"}, "must be before endTime"),
        ({"endTime": "2024-07-29T00:00:00Z"}, "must be before endTime"),
        ({"metricLabelStyle": "french"}, "metricLabelStyle must be one of"),
        ({"fileFormat": "xlsx"}, "fileFormat must be one of"),
        ({"format": "json-long"}, "format must be one of"),
        ({"fileFormat": "csv", "format": "parquet-wide"}, "disagree"),
        ({"metricSelect": "pm2_5*"}, "metricSelect must look like"),
        ({"metricSelect": "only :nosuchgroup"}, "metricSelect group ':nosuchgroup' is unknown"),
        ({"metricSelect": 5}, "metricSelect must be a string"),
        ({"qcAssessment": "true"}, "qcAssessment must be a boolean"),
        ({"qcFlags": 1}, "qcFlags must be a boolean"),
        ({"allDatasources": "yes"}, "allDatasources must be a boolean"),
        ({"datasourceIds": "DABCD1234"}, "datasourceIds must be a JSON array of strings"),
        ({"datasourceIds": [1]}, "datasourceIds[0] must be a string"),
        ({"datasourceIds": []}, "datasourceIds must not be empty"),
        ({"datasourceIds": DELETE}, "datasourceIds is required for a datasource-measurements report unless"),
        (
            {"datasourceIds": ["DZZZZ9999", "DYYYY8888"]},
            "unknown to org sandboxOrg1A2B: DZZZZ9999, DYYYY8888",
        ),
        ({"nodeIds": ["AXXXXXXX"]}, "nodeIds is not accepted by a datasource-measurements report"),
        ({"allDatasources": True}, "datasourceIds and allDatasources: true are mutually exclusive"),
        ({"foo": 1, "bar": 2}, "unknown field(s): bar, foo"),
        (
            {"report": "node-measurements", "datasourceIds": DELETE},
            "nodeIds is required for a node-measurements",
        ),
        (
            {"report": "node-measurements", "datasourceIds": DELETE, "nodeIds": "AXXXXXXX"},
            "nodeIds must be a JSON",
        ),
        (
            {"report": "reference-site-measurements", "datasourceIds": DELETE},
            "refSiteIds is required for a reference-site-measurements",
        ),
        (
            {
                "report": "node-measurements",
                "datasourceIds": DELETE,
                "allDatasources": True,
                "nodeIds": ["A"],
            },
            "allDatasources is only accepted by a datasource-measurements report",
        ),
    ],
)
def test_invalid_request_is_400_naming_the_field(
    clarity: ClaritySandbox, changes: dict[str, Any], expected: str
) -> None:
    response = post(clarity, changes)
    assert response.status_code == 400
    messages = response.json()["message"]
    assert isinstance(messages, list)
    assert all(isinstance(m, str) for m in messages)
    assert any(expected in m for m in messages), messages
    assert clarity.reports == []


def test_ids_of_the_wrong_kind_are_unknown(clarity: ClaritySandbox) -> None:
    node_with_ref_site = post(
        clarity, {"report": "node-measurements", "datasourceIds": DELETE, "nodeIds": clarity.ref_site_ids[:1]}
    )
    assert node_with_ref_site.status_code == 400
    assert clarity.ref_site_ids[0] in node_with_ref_site.json()["message"][0]
    ref_with_datasource = post(
        clarity,
        {
            "report": "reference-site-measurements",
            "datasourceIds": DELETE,
            "refSiteIds": clarity.datasource_ids[:1],
        },
    )
    assert ref_with_datasource.status_code == 400


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_body_must_be_a_json_object(clarity: ClaritySandbox, data: bytes) -> None:
    response = requests.post(
        f"{clarity.url}/v2/report-requests",
        data=data,
        headers={"x-api-key": clarity.api_key, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["message"][0].startswith("request body must be")


@pytest.mark.parametrize(
    "start",
    [
        "2024-07-30T00:00:00Z",
        "2024-07-30T00:00:00.000Z",
        "2024-07-30T02:00:00+02:00",
        "2024-07-29T19:00:00.000-05:00",
    ],
)
def test_time_formats_are_normalised_in_the_query_echo(clarity: ClaritySandbox, start: str) -> None:
    response = post(clarity, {"startTime": start, "endTime": "2024-07-30T12:30:00.123Z"})
    assert response.status_code == 202
    query = response.json()["query"]
    assert query["startTime"] == "2024-07-30T00:00:00.000Z"
    assert query["endTime"] == "2024-07-30T12:30:00.123Z"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "csv-wide"),
        ({"fileFormat": "csv"}, "csv-wide"),
        ({"format": "csv-wide"}, "csv-wide"),
        ({"fileFormat": "parquet"}, "parquet-wide"),
        ({"format": "parquet-wide", "fileFormat": "parquet"}, "parquet-wide"),
    ],
)
def test_format_field_and_aliases(clarity: ClaritySandbox, changes: dict[str, Any], expected: str) -> None:
    response = post(clarity, {**changes, "locationRounding": 4})
    assert response.status_code == 202
    assert response.json()["query"]["format"] == expected


def test_post_answers_the_report_record(clarity: ClaritySandbox) -> None:
    response = post(clarity, {"qcFlags": True, "metricSelect": "only pm2_5*"})
    assert response.status_code == 202
    record = response.json()
    assert set(record) == {"reportId", "reportStatus", "message", "report", "urls", "query"}
    assert REPORT_ID.fullmatch(record["reportId"])
    assert record["reportStatus"] == "in-progress"
    assert record["message"] == "Processing"
    assert record["report"] == "datasource-measurements"
    assert record["urls"] == []
    assert record["query"] == {
        "org": clarity.org,
        "report": "datasource-measurements",
        "outputFrequency": "hour",
        "startTime": "2024-07-30T00:00:00.000Z",
        "endTime": "2024-07-31T00:00:00.000Z",
        "format": "csv-wide",
        "metricLabelStyle": "canonical",
        "qcAssessment": False,
        "qcFlags": True,
        "metricSelect": "only pm2_5*",
        "datasourceIds": clarity.datasource_ids[:2],
    }
    assert clarity.reports == [record]


def test_all_datasources_is_echoed_as_the_explicit_id_list(clarity: ClaritySandbox) -> None:
    response = post(clarity, {"datasourceIds": DELETE, "allDatasources": True})
    assert response.status_code == 202
    assert response.json()["query"]["datasourceIds"] == clarity.datasource_ids
    report_id = response.json()["reportId"]
    table = clarity.report_table(report_id)
    assert set(table.column("datasourceId").to_pylist()) == set(clarity.datasource_ids)
    assert "REFERENCE_SITE" in table.column("sourceType").to_pylist()


def test_post_status_is_configurable() -> None:
    with ClaritySandbox(post_status=200) as sandbox:
        assert post(sandbox).status_code == 200
    with pytest.raises(ValueError, match="post_status must be a 2xx status"):
        ClaritySandbox(post_status=302)


# -- quota ------------------------------------------------------------------------------
def test_quota_per_org_and_day_then_429() -> None:
    with ClaritySandbox(quota_per_day=3, report_delay=0.0) as sandbox:
        for _ in range(3):
            assert post(sandbox).status_code == 202
        refused = post(sandbox)
        assert refused.status_code == 429
        assert "quota" in refused.json()["message"][0]
        assert post(sandbox, {"report": "nope"}).status_code == 400  # validation still comes first
        other = post(
            sandbox, {"org": OTHER_ORG, "datasourceIds": [sandbox.fleet(OTHER_ORG)[0].datasource_id]}
        )
        assert other.status_code == 202  # the quota is per organization
        assert len(sandbox.reports) == 4
        sandbox.reset()
        assert sandbox.reports == []
        assert post(sandbox).status_code == 202


# -- poll and life cycle ----------------------------------------------------------------
def test_singular_and_plural_poll_paths_agree(clarity: ClaritySandbox) -> None:
    report_id = request_report(clarity)
    singular = poll(clarity, report_id).json()
    plural = poll(clarity, report_id, plural=True).json()
    with_org = poll(clarity, report_id, org=clarity.org).json()
    for record in (singular, plural, with_org):
        assert record["reportStatus"] == "succeeded"
        assert record["message"] == "Ready"
        assert record["query"] == singular["query"]
        assert [file_name(u) for u in record["urls"]] == [f"{report_id}.csv.gz"]


@pytest.mark.parametrize("plural", [False, True])
def test_unknown_report_is_404(clarity: ClaritySandbox, plural: bool) -> None:
    response = poll(clarity, "JBDOESNOTX", plural=plural)
    assert response.status_code == 404
    assert response.json() == {"message": ["Report not found"]}


def test_poll_org_must_be_permitted_and_match(clarity: ClaritySandbox) -> None:
    report_id = request_report(clarity)
    assert poll(clarity, report_id, org=FORBIDDEN_ORG).status_code == 403
    assert poll(clarity, report_id, org=OTHER_ORG).status_code == 404
    assert poll(clarity, report_id, org=clarity.org).status_code == 200


def test_life_cycle_in_progress_then_succeeded() -> None:
    with ClaritySandbox(report_delay=1.0) as sandbox:
        report_id = request_report(sandbox)
        first = poll(sandbox, report_id).json()
        assert first["reportStatus"] == "in-progress"
        assert first["message"] == "Processing"
        assert first["urls"] == []
        assert "urlsExpireAt" not in first
        final = wait_final(sandbox, report_id)
        assert final["reportStatus"] == "succeeded"
        assert final["message"] == "Ready"
        assert len(final["urls"]) == 1
        assert ISO_MS.fullmatch(final["urlsExpireAt"])
        query = parse_qs(urlsplit(final["urls"][0]).query)
        signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        expires_at = signed_at + timedelta(seconds=int(query["X-Amz-Expires"][0]))
        assert datetime.fromisoformat(final["urlsExpireAt"]) == expires_at
        assert query["X-Amz-Expires"] == ["3600"]


def test_set_ready_skips_the_delay() -> None:
    with ClaritySandbox(report_delay=3600) as sandbox:
        report_id = request_report(sandbox)
        assert poll(sandbox, report_id).json()["reportStatus"] == "in-progress"
        assert sandbox.report(report_id)["reportStatus"] == "in-progress"
        sandbox.set_ready(report_id)
        assert poll(sandbox, report_id).json()["reportStatus"] == "succeeded"
        with pytest.raises(KeyError):
            sandbox.set_ready("JBNOSUCHID")


def test_failed_report(clarity: ClaritySandbox) -> None:
    clarity.fail_next_reports(1, message="boom: out of capacity")
    failed_id = request_report(clarity)
    ok_id = request_report(clarity)
    failed = wait_final(clarity, failed_id)
    assert failed["reportStatus"] == "failed"
    assert failed["message"] == "boom: out of capacity"
    assert failed["urls"] == []
    assert "urlsExpireAt" not in failed
    assert wait_final(clarity, ok_id)["reportStatus"] == "succeeded"
    assert clarity.report_files(failed_id) == []
    with pytest.raises(ValueError, match="has no files"):
        clarity.report_table(failed_id)


def test_unknown_status(clarity: ClaritySandbox) -> None:
    clarity.unknown_status_next(2, status="queued")
    ids = [request_report(clarity) for _ in range(3)]
    records = [wait_final(clarity, i) for i in ids]
    assert [r["reportStatus"] for r in records] == ["queued", "queued", "succeeded"]
    assert records[0]["urls"] == []
    with pytest.raises(ValueError, match="documented"):
        clarity.unknown_status_next(status="failed")
    with pytest.raises(ValueError, match="n must be >= 1"):
        clarity.fail_next_reports(0)


# -- downloads --------------------------------------------------------------------------
def test_csv_download_keeps_the_gzip_bytes(clarity: ClaritySandbox) -> None:
    report_id, (url,) = ready_urls(clarity)
    (path,) = clarity.report_files(report_id)
    stored = path.read_bytes()
    with requests.get(url, stream=True, timeout=30) as response:
        raw = response.raw.read(decode_content=False)
        headers = response.headers
    assert raw[:2] == b"\x1f\x8b"
    assert raw == stored
    assert headers["Content-Type"] == "text/csv"
    assert headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(stored)
    assert headers["ETag"] == f'"{hashlib.md5(stored).hexdigest()}"'
    decoded = requests.get(url, timeout=30)  # requests decodes Content-Encoding: gzip
    assert decoded.content == gzip.decompress(stored)
    assert decoded.content.startswith(b"datasourceId,sourceId,sourceType,outputFrequency,startOfPeriod,")
    assert "x-api-key" not in {k.lower() for r in clarity.store.requests for k in r.headers}
    assert clarity.store.requests[-1].info == {"report_id": report_id, "file": f"{report_id}.csv.gz"}


def test_without_content_encoding_the_client_gets_gzip() -> None:
    with ClaritySandbox(report_delay=0.0, gzip_content_encoding=False) as sandbox:
        _, (url,) = ready_urls(sandbox)
        response = requests.get(url, timeout=30)
        assert "Content-Encoding" not in response.headers
        assert response.content[:2] == b"\x1f\x8b"


def test_store_needs_no_api_key_but_records_one(clarity: ClaritySandbox) -> None:
    _, (url,) = ready_urls(clarity)
    response = requests.get(url, headers={"x-api-key": clarity.api_key}, timeout=30)
    assert response.status_code == 200
    assert clarity.store.requests[-1].headers.get("x-api-key") == clarity.api_key


def test_tampered_or_unsigned_url_is_403(clarity: ClaritySandbox) -> None:
    clarity.files_per_report = 2
    report_id, urls = ready_urls(clarity)
    split = urlsplit(urls[0])
    signature = parse_qs(split.query)["X-Amz-Signature"][0]
    tampered = urls[0].replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    response = requests.get(tampered, timeout=10)
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("application/xml")
    assert "<Code>SignatureDoesNotMatch</Code>" in response.text
    assert signature not in response.text
    other_file = urls[0].replace(f"{report_id}-1.csv.gz", f"{report_id}-2.csv.gz")
    assert requests.get(other_file, timeout=10).status_code == 403  # the path is signed too
    unsigned = requests.get(f"{clarity.store_url}{split.path}", timeout=10)
    assert unsigned.status_code == 403
    assert "<Code>AccessDenied</Code>" in unsigned.text


def test_expired_urls_are_403_and_a_new_poll_gives_working_ones(clarity: ClaritySandbox) -> None:
    report_id, (url,) = ready_urls(clarity)
    content = raw_bytes(url)
    clarity.expire_urls_now()
    expired = requests.get(url, timeout=10)
    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code><Message>Request has expired</Message>" in expired.text
    (fresh,) = poll(clarity, report_id).json()["urls"]
    assert fresh != url
    assert raw_bytes(fresh) == content


def test_urls_expire_after_url_ttl() -> None:
    with ClaritySandbox(report_delay=0.0, url_ttl=1) as sandbox:
        report_id, (url,) = ready_urls(sandbox)
        time.sleep(1.1)  # X-Amz-Date has whole seconds: the URL is expired within 1 s
        expired = requests.get(url, timeout=10)
        assert expired.status_code == 403
        assert "Request has expired" in expired.text
        (fresh,) = poll(sandbox, report_id).json()["urls"]
        assert requests.get(fresh, timeout=10).status_code == 200


def test_truncated_download_then_full_one(clarity: ClaritySandbox) -> None:
    report_id, (url,) = ready_urls(clarity, {"datasourceIds": DELETE, "allDatasources": True})
    size = clarity.report_files(report_id)[0].stat().st_size
    clarity.store.faults.truncate_next(1, path="/historical/")
    with requests.get(url, stream=True, timeout=30) as response:
        assert int(response.headers["Content-Length"]) == size
        with pytest.raises(urllib3.exceptions.ProtocolError):
            response.raw.read(decode_content=False)
    assert clarity.store.requests[-1].info["truncated_at"] == size // 2
    assert len(raw_bytes(url)) == size


def test_store_faults_look_like_s3(clarity: ClaritySandbox) -> None:
    _, (url,) = ready_urls(clarity)
    clarity.store.faults.fail_next(1, status=503)
    response = requests.get(url, timeout=10)
    assert response.status_code == 503
    assert "<Code>SlowDown</Code>" in response.text
    assert requests.get(url, timeout=10).status_code == 200


def test_report_split_across_files(clarity: ClaritySandbox) -> None:
    changes = {"datasourceIds": DELETE, "allDatasources": True, "qcAssessment": True}
    _, (single_url,) = ready_urls(clarity, changes)
    clarity.files_per_report = 3
    report_id, urls = ready_urls(clarity, changes)
    assert [file_name(u) for u in urls] == [f"{report_id}-{n}.csv.gz" for n in (1, 2, 3)]
    single = csv_lines(single_url)
    parts = [csv_lines(u) for u in urls]
    assert all(part[0] == single[0] for part in parts)
    sizes = [len(part) - 1 for part in parts]
    assert max(sizes) - min(sizes) <= 1
    assert [row for part in parts for row in part[1:]] == single[1:]
    assert clarity.report_table(report_id).num_rows == len(single) - 1


def test_parquet_download(clarity: ClaritySandbox) -> None:
    report_id, (url,) = ready_urls(clarity, {"fileFormat": "parquet", "qcFlags": True})
    assert file_name(url) == f"{report_id}.parquet"
    response = requests.get(url, timeout=30)
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert "Content-Encoding" not in response.headers
    table = pq.read_table(io.BytesIO(response.content))
    assert table.schema.field("startOfPeriod").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("pm2_5ConcMass1HourMean.value").type == pa.float64()
    assert table.schema.field("pm2_5ConcMassNowcastUsEpaAqi.value").type == pa.int64()
    csv_id, _ = ready_urls(clarity, {"qcFlags": True})
    assert clarity.report_table(report_id).equals(clarity.report_table(csv_id))
    assert table.num_rows == 48


def test_identical_requests_give_identical_files(clarity: ClaritySandbox) -> None:
    changes = {
        "outputFrequency": "minute",
        "endTime": "2024-07-30T02:00:00Z",
        "qcAssessment": True,
        "qcFlags": True,
    }
    first_id, (first,) = ready_urls(clarity, changes)
    second_id, (second,) = ready_urls(clarity, changes)
    assert first_id != second_id
    assert raw_bytes(first) == raw_bytes(second)


def test_window_without_rows_gives_a_header_only_file(clarity: ClaritySandbox) -> None:
    window = {"startTime": "2024-07-30T00:10:00Z", "endTime": "2024-07-30T00:50:00Z"}
    report_id, (url,) = ready_urls(clarity, window)
    lines = csv_lines(url)
    assert len(lines) == 1
    assert lines[0][0] == "datasourceId"
    assert clarity.report_table(report_id).num_rows == 0
    _, (parquet_url,) = ready_urls(clarity, {**window, "fileFormat": "parquet-wide"})
    assert pq.read_table(io.BytesIO(requests.get(parquet_url, timeout=10).content)).num_rows == 0


# -- file contents ----------------------------------------------------------------------
@pytest.mark.parametrize("qc", [(False, False), (True, True), (True, False), (False, True)])
@pytest.mark.parametrize("frequency", ["minute", "hour", "day"])
@pytest.mark.parametrize(
    "report", ["datasource-measurements", "node-measurements", "reference-site-measurements"]
)
def test_exact_canonical_header(
    clarity: ClaritySandbox, report: str, frequency: str, qc: tuple[bool, bool]
) -> None:
    ids = {
        "datasource-measurements": ("datasourceId", "datasourceIds", clarity.datasource_ids[:1]),
        "node-measurements": ("nodeId", "nodeIds", clarity.node_ids[:2]),
        "reference-site-measurements": ("refSiteId", "refSiteIds", clarity.ref_site_ids[:1]),
    }
    id_column, id_field, id_values = ids[report]
    start, end = WINDOWS[frequency]
    changes = {
        "report": report,
        "outputFrequency": frequency,
        "startTime": start,
        "endTime": end,
        "datasourceIds": DELETE,
        id_field: id_values,
        "qcAssessment": qc[0],
        "qcFlags": qc[1],
    }
    report_id, (url,) = ready_urls(clarity, changes)
    times = ["time"] if frequency == "minute" else ["startOfPeriod", "endOfPeriod"]
    attributes = [
        *(["qcAssessment"] if qc[0] else []),
        *(["qcFlags"] if qc[1] else []),
        "raw",
        "status",
        "value",
    ]
    expected = [
        id_column,
        "sourceId",
        "sourceType",
        "outputFrequency",
        *times,
        "locationLatitude",
        "locationLongitude",
    ]
    expected += [f"{metric}.{attribute}" for metric in METRICS[frequency] for attribute in attributes]
    lines = csv_lines(url)
    assert lines[0] == expected
    rows = lines[1:]
    assert rows
    assert {row[0] for row in rows} == set(id_values)
    assert {row[3] for row in rows} == {frequency}
    source_type = "REFERENCE_SITE" if report == "reference-site-measurements" else "CLARITY_NODE"
    assert {row[2] for row in rows} == {source_type}
    if report != "datasource-measurements":
        assert all(row[0] == row[1] for row in rows)
    table = clarity.report_table(report_id)
    assert table.column_names == expected
    assert table.num_rows == len(rows)


def test_rows_stay_inside_the_window(clarity: ClaritySandbox) -> None:
    window = {"startTime": "2024-07-30T00:30:00Z", "endTime": "2024-07-30T04:30:00Z"}
    minute_id, _ = ready_urls(clarity, {**window, "outputFrequency": "minute"})
    times = [datetime.fromisoformat(t) for t in clarity.report_table(minute_id).column("time").to_pylist()]
    start, end = datetime(2024, 7, 30, 0, 30, tzinfo=UTC), datetime(2024, 7, 30, 4, 30, tzinfo=UTC)
    assert all(start <= t < end for t in times)
    assert times == sorted(times)
    hour_id, _ = ready_urls(clarity, window)
    starts = clarity.report_table(hour_id).column("startOfPeriod").to_pylist()
    assert sorted(set(starts)) == [f"2024-07-30T0{h}:00:00.000Z" for h in (1, 2, 3)]


def test_english_and_legacy_labels(clarity: ClaritySandbox) -> None:
    changes = {"report": "node-measurements", "datasourceIds": DELETE, "nodeIds": clarity.node_ids[:1]}
    _, (english_url,) = ready_urls(clarity, {**changes, "metricLabelStyle": "english"})
    header_line = gzip.decompress(raw_bytes(english_url)).split(b"\n", 1)[0].decode()
    assert header_line.startswith(
        "nodeId,Source Id,Source Type,Output Frequency,Start of Period,End of Period,"
        "Location Latitude [deg],Location Longitude [deg],"
    )
    assert '"PM 2.5 mass concentration, 1-hour mean value"' in header_line
    _, (legacy_url,) = ready_urls(clarity, {**changes, "metricLabelStyle": "legacy"})
    legacy = csv_lines(legacy_url)[0]
    assert "pm2_5ConcMass.value" in legacy
    assert "pm2_5ConcMass1HourMean.value" not in legacy


@pytest.mark.parametrize(
    ("expression", "metrics"),
    [
        (
            "only pm2_5* + :internal",
            {
                "pm2_5ConcMass1HourMean",
                "pm2_5ConcMass24HourRollingMean",
                "pm2_5ConcMassNowcast",
                "pm2_5ConcMassNowcastUsEpaAqi",
                "relHumidInternal1HourMean",
                "temperatureInternal1HourMean",
            },
        ),
        ("only *NOWCAST*", {"pm2_5ConcMassNowcast", "pm2_5ConcMassNowcastUsEpaAqi"}),
    ],
)
def test_metric_select_filters_columns(clarity: ClaritySandbox, expression: str, metrics: set[str]) -> None:
    _, (url,) = ready_urls(clarity, {"metricSelect": expression})
    header = csv_lines(url)[0]
    assert {name.rsplit(".", 1)[0] for name in header[8:]} == metrics


def test_reference_site_rows_populate_few_metrics(clarity: ClaritySandbox) -> None:
    changes = {
        "report": "reference-site-measurements",
        "datasourceIds": DELETE,
        "refSiteIds": clarity.ref_site_ids,
    }
    report_id, _ = ready_urls(clarity, changes)
    table = clarity.report_table(report_id)
    populated = {
        n.rsplit(".", 1)[0] for n in table.column_names[8:] if table.column(n).null_count < table.num_rows
    }
    assert populated <= {m for m in HOUR_METRICS if m.startswith(("pm2_5", "no2", "o3"))}
    assert "o3Conc1HourMean" in populated


# -- sandbox object ---------------------------------------------------------------------
def test_connection(clarity: ClaritySandbox) -> None:
    expected = {
        "conn_type": "clarity",
        "host": clarity.url,
        "password": clarity.api_key,
        "login": clarity.org,
    }
    assert clarity.connection() == expected
    assert json.loads(clarity.connection_json()) == expected
    assert clarity.url.startswith("http://127.0.0.1:")
    assert clarity.store_url.startswith("http://127.0.0.1:")
    assert clarity.store_url != clarity.url


def test_reset_and_stop_delete_files() -> None:
    sandbox = ClaritySandbox(report_delay=0.0).start()
    try:
        report_id, _ = ready_urls(sandbox)
        (path,) = sandbox.report_files(report_id)
        assert path.exists()
        sandbox.api.faults.fail_next(5)
        sandbox.reset()
        assert not path.exists()
        assert sandbox.api.faults.pending == 0
        assert sandbox.api.requests == []
        assert poll(sandbox, report_id).status_code == 404
        report_id, _ = ready_urls(sandbox)
        (path,) = sandbox.report_files(report_id)
    finally:
        sandbox.stop()
    assert not path.exists()
    sandbox.stop()  # idempotent


def test_custom_fleet() -> None:
    fleet = [Datasource("DTEST0001", "ATESTNOD", "CLARITY_NODE", 52.1, 4.3)]
    with ClaritySandbox(report_delay=0.0, datasources=fleet) as sandbox:
        assert sandbox.datasource_ids == ["DTEST0001"]
        assert sandbox.node_ids == ["ATESTNOD"]
        assert sandbox.ref_site_ids == []
        report_id, _ = ready_urls(sandbox, {"datasourceIds": ["DTEST0001"]})
        table = sandbox.report_table(report_id)
        assert set(table.column("locationLatitude").to_pylist()) == {"52.1"}
