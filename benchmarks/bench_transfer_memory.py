"""Peak memory of ClarityReportToClarifyOperator on a ~1,000,000-row minute report.

    python benchmarks/bench_transfer_memory.py --rows 1000000

Both sandboxes run in a child process, so that the Clarify sandbox's store (millions of points in Python
dicts) and the report generation do not count towards the measured process, which only runs the transfer
the way a worker would: the operator's ``execute`` with a minimal context, over real HTTP. The report has the
shape of a real one: the sandbox's default fleet (4 nodes, 2 reference sites), per-minute readings of the
nine quantities nodes measure, qcAssessment and qcFlags columns, gzip CSV (or ``--format parquet``); the
window is chosen to give about ``--rows`` rows.

Limits are the real ones (8 MiB body limit, 4 MiB request budget) except pacing: the Clarify sandbox's rate
limit and the hook's pacing are off, so the run takes seconds instead of one second per request.

Prints the elapsed time, rows, points, requests, bytes sent, the request fill ratio, the RSS before the
transfer and the peak RSS (``getrusage`` ``ru_maxrss`` and ``/proc/self/status`` ``VmHWM``); exits with
status 1 when the peak reaches ``--limit-mb`` (default 300).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from airflow_provider_clarify.testing.sandbox import Sandbox


def insert_stats(sandbox: Sandbox) -> dict[str, Any]:
    """Child process: what the Clarify sandbox received and stores."""
    inserts = sandbox.clarify.rpc_calls("integration.insert")
    stored, signals = common.stored_points(sandbox)
    return {
        "requests": len(inserts),
        "sizes": [r.body_bytes for r in inserts],
        "statuses": sorted({r.status for r in inserts if r.status is not None}),
        "signals": signals,
        "stored": stored,
    }


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+), so it measures the transfer only."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Start the sandboxes in a child process and run the benchmark against them."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="report rows to aim for")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", help="report file format")
    parser.add_argument("--limit-mb", type=float, default=300.0, help="fail when the peak RSS reaches this")
    args = parser.parse_args(argv)

    common.airflow_env()
    with common.sandboxes_in_child({"rate_limit": None}, {"report_delay": 0.0}, insert_stats) as (
        pipe,
        datasource_ids,
    ):
        return run(args, pipe, datasource_ids)


def run(args: argparse.Namespace, pipe: Connection, datasource_ids: list[str]) -> int:
    """Request the report, run the transfer, print the numbers; 0 when under the limit and complete."""
    from airflow_provider_clarify.transfers.clarity_to_clarify import ClarityReportToClarifyOperator
    from airflow_provider_clarify.utils.coalesce import FULL_REQUEST
    from airflow_provider_clarify.utils.payload import DEFAULT_REQUEST_BYTES

    sources = len(datasource_ids)
    minutes = math.ceil(args.rows / (sources * common.READING_RATE))
    end = common.START + timedelta(minutes=minutes)
    report_id, generating = common.request_minute_report(datasource_ids, minutes, args.format)
    print(
        f"report {report_id}: {sources} sources, {common.START:%Y-%m-%d} .. {end:%Y-%m-%d %H:%M} "
        f"({minutes} minutes), {args.format}, generated in {generating:.1f} s"
    )

    operator = ClarityReportToClarifyOperator(task_id="bench", report_id=report_id, requests_per_second=None)
    baseline = common.status_kib("VmRSS")
    peak_was_reset = reset_peak()
    started = time.perf_counter()
    result: dict[str, Any] = operator.execute(context={})
    elapsed = time.perf_counter() - started
    hwm = common.status_kib("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    pipe.send("stats")
    server = pipe.recv()

    peak_mb = max(hwm, maxrss) / 1024
    sizes = server["sizes"]
    sent = sum(sizes)
    fill = sent / (len(sizes) * DEFAULT_REQUEST_BYTES) if sizes else 0.0
    full = sum(size >= FULL_REQUEST * DEFAULT_REQUEST_BYTES for size in sizes)
    print("pacing: off (Clarify sandbox rate_limit=None, hook requests_per_second=None); other limits real")
    print(f"result:         {result}")
    print(f"elapsed:        {elapsed:.1f} s")
    print(f"rows:           {result['rows']}")
    print(
        f"points:         {result['points']} sent, {server['stored']} stored in {server['signals']} signals"
    )
    print(f"requests:       {server['requests']} (HTTP {server['statuses']})")
    print(f"bytes sent:     {sent} ({sent / common.MIB:.1f} MiB; largest request {max(sizes, default=0)})")
    print(
        f"request fill:   {fill:.1%} of the {DEFAULT_REQUEST_BYTES // common.MIB} MiB budget on average; "
        f"{full} of {len(sizes)} requests at least {FULL_REQUEST:.0%} full"
    )
    print(f"baseline RSS:   {baseline / 1024:.1f} MB (after imports, before the transfer)")
    hwm_note = f"VmHWM {hwm / 1024:.1f} MB " + ("since just before the transfer" if peak_was_reset else "")
    print(f"peak RSS:       {peak_mb:.1f} MB (ru_maxrss {maxrss / 1024:.1f} MB, {hwm_note.strip()})")
    ok = (
        result["rows"] > 0
        and server["stored"] == result["points"]
        and server["requests"] == result["requests"]
        and peak_mb < args.limit_mb
    )
    verdict = "OK" if ok else "FAIL"
    print(f"{verdict}: peak RSS {peak_mb:.1f} MB, limit {args.limit_mb:g} MB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
