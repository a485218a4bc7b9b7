"""`make demo`: start the sandbox of both APIs and show them answering over real HTTP.

This is the foundation demo: it talks to the sandboxes with plain ``requests`` (the provider's hooks and
operators grow it into the full DAG run). It exits non-zero when anything does not answer as documented.
"""

from __future__ import annotations

import gzip
import io
import sys
import time

import requests

from airflow_provider_clarify.testing.sandbox import Sandbox


def _clarify(sandbox: Sandbox) -> None:
    clarify = sandbox.clarify
    body = {
        "jsonrpc": "2.0",
        "method": "integration.insert",
        "id": "1",
        "params": {
            "integration": clarify.integration_id,
            "data": {
                "times": ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"],
                "series": {"demo.temperature": [1.5, 2.25, None]},
            },
        },
    }
    response = requests.post(
        f"{clarify.url}rpc",
        json=body,
        auth=(clarify.integration_id, clarify.password),
        headers={"X-API-Version": "1.1"},
        timeout=30,
    )
    response.raise_for_status()
    summary = response.json()["result"]["signalsByInput"]["demo.temperature"]
    stored = clarify.points("demo.temperature")
    print(f"Clarify  {clarify.url}rpc  integration.insert -> {summary['id']} created={summary['created']}")
    print(
        f"         the sandbox stores {len(stored)} points: {[f'{t:%H:%M}={v}' for t, v in stored.items()]}"
    )
    if len(stored) != 2:
        raise SystemExit("the Clarify sandbox did not store the two non-null points")


def _clarity(sandbox: Sandbox) -> None:
    clarity = sandbox.clarity
    headers = {"x-api-key": clarity.api_key}
    request = {
        "org": clarity.org,
        "report": "datasource-measurements",
        "outputFrequency": "hour",
        "startTime": "2026-01-01T00:00:00.000Z",
        "endTime": "2026-01-02T00:00:00.000Z",
        "datasourceIds": clarity.datasource_ids[:2],
        "fileFormat": "csv-wide",
    }
    created = requests.post(f"{clarity.url}/v2/report-requests", json=request, headers=headers, timeout=30)
    created.raise_for_status()
    report_id = created.json()["reportId"]
    print(
        f"Clarity  {clarity.url}/v2/report-requests -> report {report_id} ({created.json()['reportStatus']})"
    )
    deadline = time.monotonic() + 60
    while True:
        report = requests.get(
            f"{clarity.url}/v2/report-request/{report_id}", headers=headers, timeout=30
        ).json()
        if report["reportStatus"] != "in-progress" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if report["reportStatus"] != "succeeded":
        raise SystemExit(f"report {report_id} ended {report['reportStatus']}: {report.get('message')}")
    (url,) = report["urls"]
    download = requests.get(url, stream=True, timeout=30)  # pre-signed: no API key
    download.raise_for_status()
    raw = download.raw.read(decode_content=False)
    text = gzip.decompress(raw).decode()
    rows = list(io.StringIO(text))
    print(f"         {report['reportStatus']}: 1 file, {len(raw)} bytes gzip, {len(rows) - 1} rows")
    print(f"         header: {rows[0][:100].strip()}...")


def main() -> int:
    """Start both sandboxes and exercise each once."""
    with Sandbox(clarity={"report_delay": 1.0}) as sandbox:
        _clarify(sandbox)
        _clarity(sandbox)
    print("Both sandboxes answered as documented.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
