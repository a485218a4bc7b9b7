"""Benchmark 3: 1,000 ClarityReportTriggers polling the Clarity sandbox in one event loop.

    python benchmarks/bench_triggers.py                 # 1,000 triggers, reports ready after 30 s
    python benchmarks/bench_triggers.py --stagger 5     # the triggers start over 5 s instead of at once
    python benchmarks/bench_triggers.py --gc-freeze     # what-if: gc.freeze() after the imports
    python benchmarks/bench_triggers.py --cold          # the trigger class is loaded inside the loop
    python benchmarks/bench_triggers.py --quick         # 50 triggers, goals not judged

The Clarity sandbox runs in its own process (so its work never shows up as a stall of the measured loop).
This process requests the reports (one small minute report each, every report ready ``--delay`` seconds
after it was requested), then starts a fresh child process that runs every trigger's ``run()`` with
``asyncio.gather`` in one event loop, as the triggerer does, the ``clarity_default`` connection coming from
``AIRFLOW_CONN_CLARITY_DEFAULT`` (the trigger resolves it the async way). The child loads the trigger class
(imports its module, as the triggerer does once per class) before the measurement, unless ``--cold``, and
collects the garbage of its imports before the measurement starts. A heartbeat task sleeps 10 ms in a loop
and records how late it wakes up: the largest lateness is the longest loop stall; the CPU time the loop's
thread used meanwhile tells work of this process from waiting for a core. Every garbage collection is timed
(a full one walks the whole heap, Airflow's included). RSS is read before the triggers start and at the
end (peak ``VmHWM``).

Goals: no stall over 100 ms; at most 150 MB added for 1,000 triggers. Exit status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from airflow.triggers.base import BaseTrigger

MAX_STALL_S = 0.100
MAX_ADDED_MB = 150.0
HEARTBEAT_S = 0.010


def serve(pipe: Connection, delay: float, quota: int) -> None:
    """Child process: the Clarity sandbox; answers ``stats`` and ``stop``."""
    from airflow_provider_clarify.testing.clarity import ClaritySandbox

    with ClaritySandbox(report_delay=delay, quota_per_day=quota) as sandbox:
        pipe.send({"conn": sandbox.connection_json(), "datasource_ids": sandbox.datasource_ids})
        while True:
            command = pipe.recv()
            if command == "stop":
                return
            polls = [r for r in sandbox.api.requests if r.method == "GET"]
            pipe.send({"polls": len(polls), "statuses": sorted({r.status for r in polls if r.status})})


def child_triggers(options: dict[str, Any]) -> dict[str, Any]:
    """Run every trigger in one event loop with a heartbeat; report stalls, RSS and events."""
    import asyncio
    import gc
    import importlib

    common.airflow_env()
    importlib.import_module("airflow.triggers.base")  # the triggerer has it before it loads a trigger class

    def load_trigger_class() -> tuple[type[BaseTrigger], float]:
        # What the triggerer does, once per class path: import the module (the provider's hook, requests,
        # aiohttp, ...). A one-off; done before the heartbeat unless --cold.
        before = time.perf_counter()
        module = importlib.import_module("airflow_provider_clarify.triggers.clarity")
        trigger_class: type[BaseTrigger] = module.ClarityReportTrigger
        return trigger_class, (time.perf_counter() - before) * 1000

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if not options["cold"]:
            trigger_class, load_ms = load_trigger_class()
        # Start without the garbage of the imports, so the collections measured are the triggers' own;
        # --gc-freeze then moves everything imported out of the collector's sight, as gc.freeze() in a
        # triggerer's start-up would.
        gc.collect()
        if options["gc_freeze"]:
            gc.freeze()
        lateness: list[float] = []
        woke: list[float] = []
        # CPU time of this process during each beat: a stall with little CPU waited for a core (other
        # processes on the machine), one with as much CPU as lateness was work done by this process (the
        # loop, or a garbage collection holding the GIL in one of its threads).
        busy: list[float] = []
        done = asyncio.Event()

        async def heartbeat() -> None:
            while not done.is_set():
                before, cpu = loop.time(), time.process_time()
                await asyncio.sleep(HEARTBEAT_S)
                woke.append(loop.time())
                lateness.append(woke[-1] - before - HEARTBEAT_S)
                busy.append(time.process_time() - cpu)

        async def first_event(trigger: BaseTrigger, delay: float) -> dict[str, Any]:
            await asyncio.sleep(delay)  # --stagger: triggers arriving over time, as tasks defer
            async for event in trigger.run():
                return dict(event.payload)
            raise RuntimeError("the trigger yielded no event")

        # Garbage collections: (wall ms, CPU ms, generation, seconds after the triggers started).
        collections: list[tuple[float, float, int, float]] = []
        gc_started = (0.0, 0.0)

        def on_gc(phase: str, info: dict[str, int]) -> None:
            nonlocal gc_started
            if phase == "start":
                gc_started = (time.perf_counter(), time.thread_time())
                return
            wall, cpu = time.perf_counter() - gc_started[0], time.thread_time() - gc_started[1]
            collections.append((wall * 1000, cpu * 1000, info["generation"], loop.time() - loop_started))

        beat = asyncio.create_task(heartbeat())
        # Control: the heartbeat alone for a few seconds shows the stalls that come from the machine (other
        # processes, the sandbox on the same cores), not from the triggers.
        await asyncio.sleep(options["control"])
        control = max(lateness, default=0.0)
        lateness.clear()
        woke.clear()
        busy.clear()
        started = time.perf_counter()
        loop_started = loop.time()
        cpu_before = time.process_time()
        gc.callbacks.append(on_gc)
        if options["cold"]:
            trigger_class, load_ms = load_trigger_class()
        baseline = common.rss_mb()  # after the imports, also with --cold: they are not the triggers' memory
        end_time = time.time() + options["deadline"]
        triggers = [
            trigger_class(report_id=report_id, end_time=end_time, poll_interval=options["poll_interval"])
            for report_id in options["report_ids"]
        ]
        spread = options["stagger"] / len(triggers)
        events = await asyncio.gather(*(first_event(t, i * spread) for i, t in enumerate(triggers)))
        cpu = time.process_time() - cpu_before
        gc.callbacks.remove(on_gc)
        elapsed = time.perf_counter() - started
        after = common.rss_mb()
        done.set()
        await beat
        statuses: dict[str, int] = {}
        for event in events:
            statuses[event["status"]] = statuses.get(event["status"], 0) + 1
        return {
            "seconds": elapsed,
            "baseline_rss_mb": baseline,
            "rss_after_mb": after,
            "control_stall_s": control,
            "cpu_s": cpu,
            "statuses": statuses,
            "beats": len(lateness),
            "max_stall_s": max(lateness),
            "p99_stall_s": statistics.quantiles(lateness, n=100)[98]
            if len(lateness) > 100
            else max(lateness),
            "stalls_over_goal": sum(1 for late in lateness if late > MAX_STALL_S),
            "max_worked_stall_s": max(map(min, lateness, busy)),
            "class_load_ms": load_ms,
            "gc": {
                "count": len(collections),
                "ms": sum(wall for wall, _, _, _ in collections),
                "cpu_ms": sum(cpu for _, cpu, _, _ in collections),
                "worst": [
                    (round(wall, 1), round(cpu, 1), gen, round(at, 2))
                    for wall, cpu, gen, at in sorted(collections)[:-4:-1]
                ],
            },
            # The longest stalls: (ms, CPU ms of this process meanwhile, seconds after the triggers started
            # when the heartbeat woke up).
            "worst": sorted(
                (
                    (round(late * 1000, 1), round(cpu * 1000, 1), round(at - loop_started, 2))
                    for late, cpu, at in zip(lateness, busy, woke, strict=True)
                ),
                reverse=True,
            )[:5],
        }

    if not options.get("profile"):
        return asyncio.run(main())
    from pyinstrument import Profiler

    with Profiler(async_mode="disabled") as profiler:
        result = asyncio.run(main())
    print(profiler.output_text(unicode=True, color=False, show_all=False), file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if common.child_main(arguments, {"triggers": child_triggers}):
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--triggers", type=int, default=1000, help="concurrent triggers")
    parser.add_argument("--delay", type=float, default=30.0, help="seconds until a report is ready")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="the triggers' poll_interval")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="load the trigger class (import its module) inside the measured loop, as a fresh triggerer does",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after the imports: full collections then skip everything imported",
    )
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="start the triggers evenly over this many seconds (default: at once)",
    )
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile of the loop")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 triggers, 5 s, goals not judged")
    args = parser.parse_args(arguments)
    if args.quick:
        args.triggers, args.delay, args.poll_interval = 50, 5.0, 1.0
    common.print_machine()
    common.airflow_env()
    context = multiprocessing.get_context("spawn")
    pipe, child_pipe = context.Pipe()
    server = context.Process(target=serve, args=(child_pipe, args.delay, args.triggers + 10), daemon=True)
    server.start()
    try:
        hello = pipe.recv()
        os.environ["AIRFLOW_CONN_CLARITY_DEFAULT"] = hello["conn"]
        return run(args, pipe, hello["datasource_ids"])
    finally:
        pipe.send("stop")
        server.join(timeout=60)


def run(args: argparse.Namespace, pipe: Connection, datasource_ids: list[str]) -> int:
    from airflow_provider_clarify.hooks.clarity import ClarityHook

    hook = ClarityHook()
    started = time.monotonic()
    report_ids = []
    for number in range(args.triggers):
        start = common.START + timedelta(minutes=number)  # distinct one-minute reports of one datasource
        record = hook.request_report(
            output_frequency="minute",
            start_time=start,
            end_time=start + timedelta(minutes=1),
            datasource_ids=datasource_ids[:1],
        )
        report_ids.append(record["reportId"])
    requested = time.monotonic() - started
    print(
        f"requested {len(report_ids)} reports in {requested:.1f} s; "
        f"each is ready {args.delay:g} s after its request"
    )
    options = {
        "report_ids": report_ids,
        "poll_interval": args.poll_interval,
        "deadline": args.delay + 300.0,
        "cold": args.cold,
        "gc_freeze": args.gc_freeze,
        "control": 1.0 if args.quick else 5.0,
        "stagger": args.stagger,
        "profile": args.profile,
    }
    result = common.run_child(str(Path(__file__).resolve()), "triggers", options)
    pipe.send("stats")
    server = pipe.recv()
    if "error" in result:
        print(result["error"])
        return 1
    added = result["peak_rss_mb"] - result["baseline_rss_mb"]
    print()
    rows = [
        (
            "triggers",
            f"{args.triggers:,} (poll_interval {args.poll_interval:g} s, reports ready after "
            f"{args.delay:g} s)",
        ),
        ("events", ", ".join(f"{status}: {count}" for status, count in sorted(result["statuses"].items()))),
        ("all events after", f"{result['seconds']:.1f} s"),
        ("polls answered by the sandbox", f"{server['polls']:,} (HTTP {server['statuses']})"),
        (
            "CPU time of the loop process",
            f"{result['cpu_s']:.1f} s ({result['cpu_s'] * 1000 / max(server['polls'], 1):.2f} ms per poll)",
        ),
        (
            "started",
            f"over {args.stagger:g} s" if args.stagger else "all at once (as after a triggerer restart)",
        ),
        ("heartbeats (10 ms sleeps)", f"{result['beats']:,}"),
        (
            "trigger class load (one-off)",
            f"{result['class_load_ms']:.0f} ms, "
            + ("inside the measured loop (--cold)" if args.cold else "before the heartbeat started"),
        ),
        ("garbage collector", "frozen after the imports (--gc-freeze)" if args.gc_freeze else "as is"),
        (
            "longest stall, heartbeat alone",
            f"{result['control_stall_s'] * 1000:.1f} ms (control, before the triggers)",
        ),
        ("longest loop stall", f"{result['max_stall_s'] * 1000:.1f} ms"),
        ("99th percentile lateness", f"{result['p99_stall_s'] * 1000:.1f} ms"),
        ("stalls over 100 ms", str(result["stalls_over_goal"])),
        (
            "longest stall as far as this process's CPU explains it",
            f"{result['max_worked_stall_s'] * 1000:.1f} ms (the rest of a stall waited for a core)",
        ),
        (
            "longest stalls (ms, process CPU ms, at s)",
            ", ".join(f"{ms} ({cpu} CPU) @ {at}" for ms, cpu, at in result["worst"]),
        ),
        (
            "garbage collections",
            f"{result['gc']['count']:,}, {result['gc']['ms']:.0f} ms "
            f"({result['gc']['cpu_ms']:.0f} ms CPU) in all; longest (ms, CPU ms, generation, at s): "
            + ", ".join(f"{ms} ({cpu} CPU) gen{gen} @ {at}" for ms, cpu, gen, at in result["gc"]["worst"]),
        ),
        ("RSS before the triggers", f"{result['baseline_rss_mb']:.0f} MB (after imports)"),
        ("RSS at the end / peak", f"{result['rss_after_mb']:.0f} MB / {result['peak_rss_mb']:.0f} MB"),
        ("added (peak - before)", f"{added:.0f} MB ({added * 1000 / args.triggers:.0f} kB per trigger)"),
    ]
    print(common.table(("figure", "value"), rows))
    stall = result["max_stall_s"]
    goals = [
        common.Goal("longest loop stall", stall <= MAX_STALL_S, f"{stall * 1000:.1f} ms", "<= 100 ms"),
        common.Goal(
            f"memory added by {args.triggers:,} triggers",
            added <= MAX_ADDED_MB,
            f"{added:.0f} MB",
            "<= 150 MB",
        ),
        common.Goal(
            "every trigger succeeded",
            result["statuses"] == {"success": args.triggers},
            str(result["statuses"]),
            f"success: {args.triggers}",
            speed=False,
        ),
    ]
    return common.report_goals(goals, judged=not args.quick)


if __name__ == "__main__":
    sys.exit(main())
