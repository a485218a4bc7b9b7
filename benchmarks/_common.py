"""Shared helpers of the benchmarks: report data, child processes, memory figures, tables and goals.

Not a benchmark itself. Every benchmark generates its data with the sandbox's report generator
(:mod:`airflow_provider_clarify.testing.reports`), deterministically, and caches the files under
``$CLARIFY_BENCH_DATA`` (default ``/tmp/clarify-bench-data/``), keyed by the parameters and a hash of the
generator's source, so re-runs do not pay for generation and a changed generator makes new files.

Each measured variant runs in its own child process (``<script> --child <variant> ...``), so its peak RSS
(``VmHWM`` of the child, read by the child at its end) holds only what that variant allocated on top of
its imports -- never the data generation, another variant, or the parent.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from multiprocessing.connection import Connection

    from airflow_provider_clarify.testing.sandbox import Sandbox

MIB = 1024 * 1024
MB = 1_000_000
DATA_DIR = Path(os.environ.get("CLARIFY_BENCH_DATA", "/tmp/clarify-bench-data"))
#: First minute of every generated report.
START = datetime(2024, 1, 1, tzinfo=UTC)
#: Share of minutes in which a sandbox source sends a reading (testing/reports.py skips 0.5 %).
READING_RATE = 0.995
#: Report file formats: benchmark name -> the generator's ``file_format``.
FORMATS = {"csv.gz": "csv-wide", "parquet": "parquet-wide"}
#: The organization whose default fleet (4 nodes, 2 reference sites) the reports hold.
ORG = "sandboxOrg1A2B"


# -- environment -----------------------------------------------------------------------------------
def airflow_env() -> None:
    """Quiet, throwaway Airflow settings for a process that imports Airflow (set before importing it)."""
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="clarify-bench-airflow-home-"))
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import msgspec
    import numpy
    import pyarrow

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        ram = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError):
        ram = "?"
    try:
        from importlib.metadata import version

        airflow = version("apache-airflow")
    except Exception:
        airflow = "?"
    return {
        "cpu": f"{os.cpu_count()} cores, {model}",
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": (
            f"pyarrow {pyarrow.__version__}, numpy {numpy.__version__}, msgspec {msgspec.__version__}, "
            f"apache-airflow {airflow}"
        ),
    }


def print_machine() -> None:
    """Print :func:`machine` as a few lines."""
    for name, value in machine().items():
        print(f"{name + ':':10}{value}")


# -- report data -----------------------------------------------------------------------------------
def minute_spec(rows: int, file_format: str) -> Any:
    """The datasource minute report of the sandbox's default fleet with about ``rows`` rows.

    Both QC options are on, which gives the layout of Clarity's sample file: 23 metrics × 5 attributes
    (``qcAssessment``, ``qcFlags``, ``raw``, ``status``, ``value``), of which nodes fill 9 metrics and
    reference sites 3.

    :param rows: rows to aim for (the generator skips 0.5 % of the minutes per source).
    :param file_format: ``csv.gz`` or ``parquet``.
    """
    from airflow_provider_clarify.testing.reports import ReportSpec, default_fleet

    fleet = default_fleet(ORG)
    minutes = max(1, math.ceil(rows / (len(fleet) * READING_RATE)))
    return ReportSpec(
        report="datasource-measurements",
        output_frequency="minute",
        start=START,
        end=START + timedelta(minutes=minutes),
        sources=fleet,
        file_format=FORMATS[file_format],
        qc_assessment=True,
        qc_flags=True,
    )


def _generator_digest() -> str:
    from airflow_provider_clarify.testing import reports

    return hashlib.sha256(Path(reports.__file__).read_bytes()).hexdigest()[:10]


def report_file(rows: int, file_format: str) -> Path:
    """The path of the cached report file for ``(rows, file_format)``, generated on first use.

    :param rows: rows to aim for.
    :param file_format: ``csv.gz`` or ``parquet``.
    """
    from airflow_provider_clarify.testing.reports import write_report_files

    folder = DATA_DIR / f"minute-{ORG}-{rows}-{file_format}-{_generator_digest()}"
    done = folder / "done.json"
    if done.exists():
        return folder / json.loads(done.read_text())["file"]
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"generating a {rows:,}-row {file_format} report into {folder} (cached for later runs) ...",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        (path,) = write_report_files(minute_spec(rows, file_format), Path(scratch), "bench")
        final = folder / path.name
        path.rename(final)
    done.write_text(json.dumps({"file": final.name, "seconds": round(time.monotonic() - started, 1)}))
    print(
        f"  generated in {time.monotonic() - started:.0f} s: {final.stat().st_size / MB:.0f} MB", flush=True
    )
    return final


# -- memory ----------------------------------------------------------------------------------------
def status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mb() -> float:
    """This process's resident set size now, MB (10^6 bytes)."""
    return status_kib("VmRSS") * 1024 / MB


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads), seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident set size since it started, MB (10^6 bytes)."""
    return status_kib("VmHWM") * 1024 / MB


# -- child processes -------------------------------------------------------------------------------
def run_child(script: str, variant: str, options: dict[str, Any], *, timeout: float = 3600) -> dict[str, Any]:
    """Run one variant in a fresh Python process and return the dict it reported.

    The child's output goes to this process's terminal; its result travels through a temporary file.
    On failure the dict holds ``error``.

    :param script: the benchmark script (``__file__``).
    :param variant: the variant name the script's ``--child`` mode knows.
    :param options: JSON-able keyword options for the variant.
    :param timeout: seconds before the child is killed.
    """
    with tempfile.NamedTemporaryFile(prefix="clarify-bench-", suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    command = [sys.executable, script, "--child", variant, "--child-options", json.dumps(options)]
    command += ["--child-result", str(result_path)]
    try:
        completed = subprocess.run(command, check=False, timeout=timeout)
        text = result_path.read_text()
        if completed.returncode != 0 or not text:
            return {"error": f"child {variant} exited with status {completed.returncode}"}
        result: dict[str, Any] = json.loads(text)
        return result
    except subprocess.TimeoutExpired:
        return {"error": f"child {variant} ran longer than {timeout:.0f} s"}
    finally:
        result_path.unlink(missing_ok=True)


def child_main(argv: Sequence[str], variants: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
    """Run a child variant when ``argv`` asks for one (``--child``); return False otherwise.

    The variant's dict gets ``peak_rss_mb`` (``VmHWM`` at its end) added and is written as JSON.

    :param argv: the command line (without the program name).
    :param variants: variant name -> function of its options.
    """
    if "--child" not in argv:
        return False
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=sorted(variants), required=True)
    parser.add_argument("--child-options", default="{}")
    parser.add_argument("--child-result", required=True)
    args = parser.parse_args(argv)
    result = variants[args.child](json.loads(args.child_options))
    result["peak_rss_mb"] = peak_rss_mb()
    Path(args.child_result).write_text(json.dumps(result))
    return True


def serve_sandboxes(
    pipe: Connection,
    clarify: dict[str, Any],
    clarity: dict[str, Any],
    stats: Callable[[Sandbox], dict[str, Any]],
) -> None:
    """Child process: run both sandboxes; answer ``stats`` with ``stats(sandbox)`` until ``stop``.

    :param pipe: the child's end of the pipe; the first message sent is the connections' environment
        (``env``) and the Clarity sandbox's ``datasource_ids``.
    :param clarify: keyword options of the Clarify sandbox.
    :param clarity: keyword options of the Clarity sandbox.
    :param stats: what to send back on ``stats`` (a module-level function, so that it pickles).
    """
    from airflow_provider_clarify.testing.sandbox import Sandbox

    with Sandbox(clarify=clarify, clarity=clarity) as sandbox:
        pipe.send({"env": sandbox.env(), "datasource_ids": sandbox.clarity.datasource_ids})
        while pipe.recv() != "stop":
            pipe.send(stats(sandbox))


@contextlib.contextmanager
def sandboxes_in_child(
    clarify: dict[str, Any], clarity: dict[str, Any], stats: Callable[[Sandbox], dict[str, Any]]
) -> Iterator[tuple[Connection, list[str]]]:
    """Both sandboxes in a child process (:func:`serve_sandboxes`), their connections in ``os.environ``.

    Yields the pipe (send ``"stats"``, then receive) and the Clarity sandbox's datasource ids; stops the
    child on exit.

    :param clarify: keyword options of the Clarify sandbox.
    :param clarity: keyword options of the Clarity sandbox.
    :param stats: what the child answers to ``stats`` (a module-level function of the sandbox).
    """
    context = multiprocessing.get_context("spawn")
    pipe, child_pipe = context.Pipe()
    child = context.Process(target=serve_sandboxes, args=(child_pipe, clarify, clarity, stats), daemon=True)
    child.start()
    try:
        hello = pipe.recv()
        os.environ.update(hello["env"])
        yield pipe, hello["datasource_ids"]
    finally:
        pipe.send("stop")
        child.join(timeout=60)


def stored_points(sandbox: Sandbox) -> tuple[int, int]:
    """How many points the Clarify sandbox stores, and in how many signals.

    :param sandbox: the sandboxes.
    """
    keys = sandbox.clarify.signals()
    return sum(len(sandbox.clarify.points(key)) for key in keys), len(keys)


def request_minute_report(
    datasource_ids: list[str], minutes: int, file_format: str = "csv"
) -> tuple[str, float]:
    """Request the sandbox fleet's minute report (both QC options, from :data:`START`) through the
    ``clarity_default`` connection and wait until it is generated; return its id and the seconds it took.

    :param datasource_ids: the sources.
    :param minutes: the report's length.
    :param file_format: ``csv`` or ``parquet``.
    """
    from airflow_provider_clarify.hooks.clarity import ClarityHook

    hook = ClarityHook()
    record = hook.request_report(
        output_frequency="minute",
        start_time=START,
        end_time=START + timedelta(minutes=minutes),
        datasource_ids=datasource_ids,
        file_format=file_format,
        qc_assessment=True,
        qc_flags=True,
    )
    report_id = str(record["reportId"])
    started = time.monotonic()
    while record.get("reportStatus") != "succeeded":
        if record.get("reportStatus") == "failed" or time.monotonic() - started > 1800:
            raise RuntimeError(f"report {report_id} did not succeed: {record.get('message')}")
        time.sleep(1.0)
        record = hook.get_report(report_id)
    return report_id, time.monotonic() - started


# -- output ----------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes into the README as it is)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


@dataclass
class Goal:
    """One goal of the issue and whether this run met it.

    :param name: what is measured against what.
    :param met: whether it was met.
    :param figure: the measured figure, as text.
    :param target: the target, as text.
    :param speed: a speed or memory goal (not judged in smoke runs); False for correctness checks.
    """

    name: str
    met: bool
    figure: str
    target: str
    speed: bool = True


def report_goals(
    goals: Sequence[Goal], *, judged: bool = True, why_not: str = "--quick: a smoke run, too small to judge"
) -> int:
    """Print the goals table; the exit status: 1 when a judged goal was missed, else 0.

    :param goals: the goals.
    :param judged: False for smoke runs (``--quick``): sizes too small to judge speed and memory, so only
        the correctness checks count.
    :param why_not: what to print when not judged.
    """
    print()
    counted = [g for g in goals if judged or not g.speed]
    rows = [
        (
            g.name,
            g.figure,
            g.target,
            ("met" if g.met else "MISSED") + ("" if g in counted else " (not judged)"),
        )
        for g in goals
    ]
    print(table(("goal", "measured", "target", "result"), rows))
    missed = [g for g in counted if not g.met]
    if not judged:
        print(f"\n{why_not}: speed and memory goals are not judged")
    print(
        f"{len(counted) - len(missed)} of {len(counted)} judged goals met"
        + (f"; MISSED: {len(missed)}" if missed else "")
    )
    return 1 if missed else 0
