"""Benchmark 1: a Clarity minute report -> Clarify insert request bodies, against its baselines.

    python benchmarks/bench_pipeline.py                      # 100k, 1M and 4M rows, csv.gz and parquet
    python benchmarks/bench_pipeline.py --rows 1000000       # one size
    python benchmarks/bench_pipeline.py --quick              # 20k-row smoke run

Variants, each in its own child process (time and peak RSS of that process alone):

* ``pipeline`` -- exactly what ``ClarityReportToClarifyOperator`` does, with its defaults (attributes
  ``value``, invalid values dropped, 4 MiB per request, metadata saved): its ``execute`` runs unchanged;
  only the two ends are swapped. The Clarity hook is replaced by a stand-in that serves the local report
  file as a non-seekable buffered stream (like the HTTP download), and the Clarify hook's transport
  (``_post_once``) by a sink that counts the bytes and answers like Clarify. So the figures hold the
  parser, the coalescing, the request encoding, the hook's insert loop and the metadata, and no network.
* ``arrow`` -- the limit: Arrow's streaming reader on the same file, reading only the columns the
  pipeline needs (id, sourceId, sourceType, outputFrequency, time, every ``.value`` and ``.qcAssessment``)
  with the same types, and nothing else.
* ``pandas`` -- naive pandas: read the whole file, mask invalid values, group by source, ``json.dumps``
  one body per source. Run up to ``--pandas-max-rows`` (default 1M: it holds the whole report in memory).
* ``pyclarify`` -- pyclarify's ``DataFrame.from_pandas`` + ``Client.insert`` per source with its network
  stubbed (``requests.post`` answers at once); the pandas frames are prepared before the clock starts.
  Optional: needs ``pip install -e .[bench]``.

Exit status 1 when a goal is missed (see the goals table at the end), 0 otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

SIZES = (100_000, 1_000_000, 4_000_000)
QUICK_ROWS = 20_000
PYCLARIFY_ROWS = 100_000
#: Goals of issue 6.
MAX_ARROW_RATIO = 2.0
MIN_PANDAS_RATIO = 4.0
MIN_PYCLARIFY_RATIO = 15.0
MAX_PEAK_RSS_MB = 300.0
#: RSS goals apply from this report size on.
RSS_GOAL_ROWS = 1_000_000
LEADING_COLUMNS = ("datasourceId", "sourceId", "sourceType", "outputFrequency", "time")
#: The integration id of the counting sink's connection (any valid one).
INTEGRATION = "sandb0c1ar1f00000001"


# -- child: the operator's pipeline into a byte-counting sink -------------------------------------------
class _UnseekableFile(io.RawIOBase):
    """A local file that cannot seek, as an HTTP body cannot (so Parquet is spooled, as in production)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = path.open("rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._file.readinto(buffer)

    def close(self) -> None:
        self._file.close()
        super().close()


class LocalReport:
    """Stands in for ``ClarityHook``: a succeeded report whose one file is a local file.

    :param path: the report file.
    """

    default_org = common.ORG

    def __init__(self, path: Path) -> None:
        self.path = path

    def get_report(self, report_id: str, org: str | None = None) -> dict[str, Any]:
        """The report record, as Clarity would answer for a succeeded minute report.

        :param report_id: the report id.
        :param org: ignored.
        """
        return {
            "reportId": report_id,
            "reportStatus": "succeeded",
            "message": "Ready",
            "report": "datasource-measurements",
            "urls": [self.path.as_uri()],
            "query": {"org": common.ORG, "outputFrequency": "minute", "metricLabelStyle": "canonical"},
        }

    def open_report_files(self, report_id: str, org: str | None = None) -> Any:
        """Yield the file as the hook does: a buffered, non-seekable stream of the stored bytes.

        :param report_id: the report id.
        :param org: ignored.
        """
        from airflow_provider_clarify.hooks.clarity import ReportFile
        from airflow_provider_clarify.utils.reports import detect_file_kind

        stream = io.BufferedReader(_UnseekableFile(self.path), buffer_size=1 << 20)
        try:
            yield ReportFile(
                index=0,
                name=self.path.name,
                kind=detect_file_kind(stream.peek(4)[:4]),
                stream=stream,
                size=self.path.stat().st_size,
            )
        finally:
            stream.close()


class _Response:
    def __init__(self, content: bytes) -> None:
        self.status_code = 200
        self.content = content


class ByteSink:
    """Replaces ``ClarifyHook._post_once``: counts the bodies and answers every key like Clarify."""

    _KEY = re.compile(rb'"([^"]+)":\[')

    def __init__(self) -> None:
        self.inserts = 0
        self.insert_bytes = 0
        self.largest = 0
        self.saves = 0
        self.save_bytes = 0

    def post(self, body: bytes) -> _Response:
        """Count one request body and answer it.

        :param body: the JSON-RPC request body.
        """
        import msgspec

        if body.startswith(b'{"jsonrpc":"2.0","method":"integration.insert"'):
            self.inserts += 1
            self.insert_bytes += len(body)
            self.largest = max(self.largest, len(body))
            keys = [key.decode() for key in self._KEY.findall(body, body.rindex(b'"series":{'))]
        else:
            self.saves += 1
            self.save_bytes += len(body)
            keys = list(msgspec.json.decode(body)["params"]["signalsByInput"])
        summary = {key: {"id": "c" * 20, "created": False, "updated": False} for key in keys}
        return _Response(
            msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "result": {"signalsByInput": summary}})
        )


def _sink_connection() -> None:
    """Airflow settings and a ``clarify_default`` connection for a hook whose transport is a sink."""
    common.airflow_env()
    # Nothing listens at this address: the sink answers instead of the network.
    connection = {"conn_type": "clarify", "host": "http://127.0.0.1:9/v1/", "login": INTEGRATION}
    connection["password"] = "bench-sink"
    os.environ["AIRFLOW_CONN_CLARIFY_DEFAULT"] = json.dumps(connection)


def child_pipeline(options: dict[str, Any]) -> dict[str, Any]:
    """Run the operator's ``execute`` on a local file into a :class:`ByteSink`."""
    _sink_connection()
    from airflow_provider_clarify.transfers.clarity_to_clarify import ClarityReportToClarifyOperator

    extra = {"batch_rows": options["batch_rows"]} if options.get("batch_rows") else {}
    operator = ClarityReportToClarifyOperator(
        task_id="bench", report_id="BENCH00001", requests_per_second=None, **extra
    )
    operator.__dict__["clarity_hook"] = LocalReport(Path(options["path"]))  # the cached_property's slot
    sink = ByteSink()
    operator.clarify_hook._post_once = sink.post  # type: ignore[method-assign]
    baseline = common.rss_mb()
    profiler = None
    if options.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler()
        profiler.start()
    started, cpu = time.perf_counter(), common.cpu_seconds()
    result = operator.execute(context={})  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False), file=sys.stderr)
    return {
        "seconds": elapsed,
        "cpu_s": common.cpu_seconds() - cpu,
        "baseline_rss_mb": baseline,
        "rows": result["rows"],
        "points": result["points"],
        "requests": sink.inserts,
        "payload_bytes": sink.insert_bytes,
        "largest_request": sink.largest,
        "signals": result["signals"],
        "save_requests": sink.saves,
    }


# -- child: Arrow parse-only ------------------------------------------------------------------------
def _header(path: Path) -> list[str]:
    import csv

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as text:
        return next(csv.reader(text))


def child_arrow(options: dict[str, Any]) -> dict[str, Any]:
    """Read the needed columns with Arrow's streaming readers, nothing else."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    path = Path(options["path"])
    parquet = path.name.endswith(".parquet")
    names = pq.ParquetFile(path).schema_arrow.names if parquet else _header(path)
    numbers = [n for n in names if n.endswith(".value")]
    texts = [*LEADING_COLUMNS, *(n for n in names if n.endswith(".qcAssessment"))]
    baseline = common.rss_mb()
    started, cpu = time.perf_counter(), common.cpu_seconds()
    rows = 0
    if parquet:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=texts + numbers):
            rows += batch.num_rows
    else:
        types: dict[str, pa.DataType] = dict.fromkeys(texts, pa.string())
        types.update(dict.fromkeys(numbers, pa.float64()))
        reader = pa_csv.open_csv(
            pa.CompressedInputStream(pa.OSFile(str(path)), "gzip"),
            read_options=pa_csv.ReadOptions(block_size=1 << 20, use_threads=True),
            convert_options=pa_csv.ConvertOptions(
                include_columns=texts + numbers,
                column_types=types,
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
        for batch in reader:
            rows += batch.num_rows
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": common.cpu_seconds() - cpu,
        "baseline_rss_mb": baseline,
        "rows": rows,
    }


# -- child: naive pandas ---------------------------------------------------------------------------
def child_pandas(options: dict[str, Any]) -> dict[str, Any]:
    """Read everything with pandas, mask invalid values, one ``json.dumps`` body per source."""
    import pandas as pd

    path = Path(options["path"])
    baseline = common.rss_mb()
    started, cpu = time.perf_counter(), common.cpu_seconds()
    frame = pd.read_parquet(path) if path.name.endswith(".parquet") else pd.read_csv(path)
    value_columns = [c for c in frame.columns if c.endswith(".value")]
    for column in value_columns:
        qc = column.removesuffix(".value") + ".qcAssessment"
        if qc in frame.columns:
            frame.loc[frame[qc] == "invalid", column] = None
    payload = points = bodies = 0
    for source, group in frame.groupby("datasourceId"):
        group = group.sort_values("time")
        series = {}
        for column in value_columns:
            values = group[column]
            present = int(values.notna().sum())
            if present:
                series[f"{source}.{column.removesuffix('.value')}"] = [
                    None if v != v else v for v in values.tolist()
                ]
                points += present
        body = json.dumps({"times": group["time"].astype(str).tolist(), "series": series})
        payload += len(body)
        bodies += 1
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": common.cpu_seconds() - cpu,
        "baseline_rss_mb": baseline,
        "rows": len(frame),
        "points": points,
        "payload_bytes": payload,
        "requests": bodies,
    }


# -- children: pyclarify, and the hook's insert from the same pandas frames ----------------------------
def _source_frames(path: Path) -> tuple[list[Any], int]:
    """One wide pandas frame per source (UTC DatetimeIndex, a column per key, invalid values masked), as a
    pyclarify user would build them from the report; and the report's row count."""
    import pandas as pd

    table = pd.read_parquet(path)
    value_columns = [c for c in table.columns if c.endswith(".value")]
    for column in value_columns:
        table.loc[table[column.removesuffix(".value") + ".qcAssessment"] == "invalid", column] = None
    frames = []
    for source, group in table.groupby("datasourceId"):
        wide = group.set_index(pd.to_datetime(group["time"], utc=True))[value_columns]
        wide = wide.dropna(axis=1, how="all")
        frames.append(wide.rename(columns=lambda c, s=source: f"{s}.{c.removesuffix('.value')}"))
    return frames, len(table)


def child_pyclarify(options: dict[str, Any]) -> dict[str, Any]:
    """``DataFrame.from_pandas`` + ``Client.insert`` per source, network stubbed."""
    try:
        import pyclarify
    except ImportError:
        return {"skipped": "pyclarify is not installed (pip install -e .[bench])"}
    from importlib.metadata import version

    import requests

    frames, rows = _source_frames(Path(options["path"]))
    keys = [key for frame in frames for key in frame.columns]
    answer = {"signalsByInput": {key: {"id": "c" * 20, "created": False} for key in keys}}
    insert_answer = json.dumps({"jsonrpc": "2.0", "id": "1", "result": answer}).encode()
    token_answer = json.dumps({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}).encode()
    sent = {"requests": 0, "bytes": 0}

    def stub_post(url: str, data: Any = None, headers: Any = None, **kwargs: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response.headers["content-type"] = "application/json"
        if url.endswith("oauth/token"):
            response._content = token_answer
        else:
            response._content = insert_answer
            sent["requests"] += 1
            sent["bytes"] += len(data)
        return response

    requests.post = stub_post  # type: ignore[assignment]  # pyclarify calls requests.post
    credentials = {
        "apiUrl": "http://127.0.0.1:9/v1/",
        "integration": INTEGRATION,
        "credentials": {"type": "client-credentials", "clientId": "bench", "clientSecret": "bench"},
    }
    client = pyclarify.Client(credentials)
    baseline = common.rss_mb()
    started, cpu = time.perf_counter(), common.cpu_seconds()
    for frame in frames:
        response = client.insert(pyclarify.DataFrame.from_pandas(frame))
        if response.error is not None:
            raise RuntimeError(f"pyclarify insert failed: {response.error}")
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": common.cpu_seconds() - cpu,
        "baseline_rss_mb": baseline,
        "rows": rows,
        "requests": sent["requests"],
        "payload_bytes": sent["bytes"],
        "version": version("pyclarify"),
    }


def child_hook_insert(options: dict[str, Any]) -> dict[str, Any]:
    """``ClarifyHook.insert`` of the same pandas frames as pyclarify gets, into a :class:`ByteSink`."""
    _sink_connection()
    from airflow_provider_clarify.hooks.clarify import ClarifyHook

    frames, rows = _source_frames(Path(options["path"]))
    hook = ClarifyHook(requests_per_second=None)
    sink = ByteSink()
    hook._post_once = sink.post  # type: ignore[method-assign]
    baseline = common.rss_mb()
    started, cpu = time.perf_counter(), common.cpu_seconds()
    for frame in frames:
        hook.insert(frame)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_s": common.cpu_seconds() - cpu,
        "baseline_rss_mb": baseline,
        "rows": rows,
        "requests": sink.inserts,
        "payload_bytes": sink.insert_bytes,
    }


VARIANTS = {
    "pipeline": child_pipeline,
    "arrow": child_arrow,
    "pandas": child_pandas,
    "pyclarify": child_pyclarify,
    "hook_insert": child_hook_insert,
}


# -- parent ----------------------------------------------------------------------------------------
def _best(script: str, variant: str, options: dict[str, Any], repeat: int) -> dict[str, Any]:
    """The fastest of ``repeat`` runs (peak RSS: the highest seen)."""
    runs = [common.run_child(script, variant, options) for _ in range(repeat)]
    good = [r for r in runs if "error" not in r and "skipped" not in r]
    if not good:
        return runs[0]
    best = min(good, key=lambda r: r["seconds"])
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in good)
    best["runs"] = [round(r["seconds"], 2) for r in good]
    return best


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if common.child_main(arguments, VARIANTS):
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, action="append", help="report size (repeatable); default 100k, 1M, 4M"
    )
    parser.add_argument("--formats", default="csv.gz,parquet", help="comma-separated: csv.gz, parquet")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_ROWS:,} rows, speed not judged"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant; the fastest counts")
    parser.add_argument(
        "--pandas-max-rows", type=int, default=1_000_000, help="largest report for naive pandas"
    )
    parser.add_argument(
        "--batch-rows", type=int, help="the pipeline's batch_rows (default: the operator's default)"
    )
    parser.add_argument("--no-pyclarify", action="store_true", help="skip the pyclarify baselines")
    parser.add_argument(
        "--profile", action="store_true", help="print a pyinstrument profile of each pipeline run"
    )
    args = parser.parse_args(arguments)
    sizes = [QUICK_ROWS] if args.quick else sorted(set(args.rows or SIZES))
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in common.FORMATS]
    if unknown:
        parser.error(f"--formats: unknown {unknown}; choose from {', '.join(common.FORMATS)}")
    script = str(Path(__file__).resolve())
    common.print_machine()

    results: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for rows in sizes:
        for file_format in formats:
            path = common.report_file(rows, file_format)
            size = path.stat().st_size / common.MB
            print(f"\n{rows:,} rows, {file_format} ({size:.0f} MB):", flush=True)
            found: dict[str, dict[str, Any]] = {}
            for variant in ("arrow", "pipeline", "pandas"):
                if variant == "pandas" and rows > args.pandas_max_rows:
                    found[variant] = {"skipped": f"not run above --pandas-max-rows {args.pandas_max_rows:,}"}
                    continue
                options = {
                    "path": str(path),
                    "profile": args.profile and variant == "pipeline",
                    "batch_rows": args.batch_rows,
                }
                found[variant] = _best(script, variant, options, args.repeat)
                print(f"  {variant}: {_seconds(found[variant])}", flush=True)
            results[(rows, file_format)] = found
    extras: dict[str, dict[str, Any]] = {}
    for variant in ("pyclarify", "hook_insert"):
        if args.no_pyclarify:
            extras[variant] = {"skipped": "--no-pyclarify"}
            continue
        path = common.report_file(QUICK_ROWS if args.quick else PYCLARIFY_ROWS, "parquet")
        extras[variant] = _best(script, variant, {"path": str(path)}, args.repeat)
        print(f"  {variant} (same pandas frames): {_seconds(extras[variant])}", flush=True)
    return summarize(results, extras, judged=not args.quick)


def _seconds(result: dict[str, Any]) -> str:
    if "seconds" in result:
        return f"{result['seconds']:.2f} s"
    return str(result.get("error") or result.get("skipped"))


def _per_100k(result: dict[str, Any]) -> float:
    return float(result["seconds"]) / max(int(result["rows"]), 1) * 100_000


def _line(rows: str, source: str, variant: str, result: dict[str, Any]) -> tuple[Any, ...]:
    if "seconds" not in result:
        return (rows, source, variant, _seconds(result), *[""] * 7)
    payload = result.get("payload_bytes")
    return (
        rows,
        source,
        variant,
        f"{result['seconds']:.2f}",
        f"{result['cpu_s']:.2f}",
        f"{_per_100k(result):.3f}",
        f"{result['peak_rss_mb']:.0f}",
        f"{result['peak_rss_mb'] - result['baseline_rss_mb']:.0f}",
        f"{payload / common.MB:.1f}" if payload else "",
        result.get("requests", ""),
        f"{result['points']:,}" if "points" in result else "",
    )


def summarize(
    results: dict[tuple[int, str], dict[str, dict[str, Any]]],
    extras: dict[str, dict[str, Any]],
    *,
    judged: bool,
) -> int:
    """Print the results and goals tables; return the exit status."""
    lines = [
        _line(f"{rows:,}", file_format, variant, found[variant])
        for (rows, file_format), found in results.items()
        for variant in ("pipeline", "arrow", "pandas")
    ]
    for variant, result in extras.items():
        lines.append(_line(f"{result.get('rows', 0):,}", "pandas frames", variant, result))
    print()
    headers = ("rows", "input", "variant", "time s", "CPU s", "s per 100k rows", "peak RSS MB", "added MB")
    print(common.table((*headers, "payload MB", "requests", "points"), lines))
    print(
        "time: wall clock of the measured part; CPU: user + system time of the process in that part (all "
        "threads; more than the time when Arrow's threads overlap). peak RSS: VmHWM of the variant's own "
        "process; added MB: peak minus its RSS after imports"
    )

    pyclarify, hook_insert = extras["pyclarify"], extras["hook_insert"]
    goals: list[common.Goal] = []
    for (rows, file_format), found in results.items():
        pipeline, arrow, pandas = found["pipeline"], found["arrow"], found["pandas"]
        label = f"{rows:,} {file_format}"
        if "seconds" not in pipeline:
            goals.append(
                common.Goal(f"pipeline runs ({label})", False, _seconds(pipeline), "no error", speed=False)
            )
            continue
        if "seconds" in arrow:
            ratio = pipeline["seconds"] / arrow["seconds"]
            goals.append(
                common.Goal(
                    f"pipeline / Arrow parse-only ({label})",
                    ratio <= MAX_ARROW_RATIO,
                    f"{ratio:.2f}x",
                    f"<= {MAX_ARROW_RATIO}x",
                )
            )
            same = pipeline["rows"] == arrow["rows"]
            goals.append(
                common.Goal(f"rows = Arrow's ({label})", same, f"{pipeline['rows']:,}", "equal", speed=False)
            )
        if "seconds" in pandas:
            ratio = pandas["seconds"] / pipeline["seconds"]
            goals.append(
                common.Goal(
                    f"naive pandas / pipeline ({label})",
                    ratio >= MIN_PANDAS_RATIO,
                    f"{ratio:.1f}x",
                    f">= {MIN_PANDAS_RATIO}x",
                )
            )
            same = pipeline["points"] == pandas["points"]
            goals.append(
                common.Goal(
                    f"points = pandas' ({label})", same, f"{pipeline['points']:,}", "equal", speed=False
                )
            )
        if "seconds" in pyclarify:
            ratio = _per_100k(pyclarify) / _per_100k(pipeline)
            goals.append(
                common.Goal(
                    f"pyclarify / pipeline, per 100k rows ({label})",
                    ratio >= MIN_PYCLARIFY_RATIO,
                    f"{ratio:.1f}x",
                    f">= {MIN_PYCLARIFY_RATIO}x",
                )
            )
        if rows >= RSS_GOAL_ROWS:
            peak = pipeline["peak_rss_mb"]
            goals.append(
                common.Goal(
                    f"pipeline peak RSS ({label})",
                    peak <= MAX_PEAK_RSS_MB,
                    f"{peak:.0f} MB",
                    f"<= {MAX_PEAK_RSS_MB:.0f} MB",
                )
            )
        largest = pipeline["largest_request"]
        goals.append(
            common.Goal(
                f"largest request ({label})",
                largest <= 4 * common.MIB,
                f"{largest:,} B",
                "<= 4 MiB",
                speed=False,
            )
        )
    for variant, result in extras.items():
        if "error" in result:
            goals.append(common.Goal(f"{variant} runs", False, result["error"], "no error", speed=False))
    if "seconds" in pyclarify and "seconds" in hook_insert:
        ratio = pyclarify["seconds"] / hook_insert["seconds"]
        goals.append(
            common.Goal(
                "pyclarify / ClarifyHook.insert, same pandas frames",
                ratio >= MIN_PYCLARIFY_RATIO,
                f"{ratio:.1f}x",
                f">= {MIN_PYCLARIFY_RATIO}x",
            )
        )
    return common.report_goals(goals, judged=judged)


if __name__ == "__main__":
    sys.exit(main())
