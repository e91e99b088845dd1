"""`shimstats demo`: the whole path on this machine, one command, nothing left behind.

As root it creates a real cgroup, runs a workload in it that builds page cache (most of it inactive, part
of it active) and a little anonymous memory, starts the guest agent and our adapter (v1 and v2 output) on
temporary unix sockets, and shows what verify and compare find: the real working set, ours, and what the
Kata Go shim (on a v1 and on a v2 host) and Kata runtime-rs would report for the same guest data. Then it
replays a real cgroup v2 capture the same way. Without root only the replay runs. Everything it created is
removed at the end, also on Ctrl-C and SIGTERM; what a run killed outright (SIGKILL) left behind, the next
run removes (a note says so), never what a run still alive has.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from shimstats import demo
from shimstats.commands.compare import format_comparison, render_right
from shimstats.explain import explain
from shimstats.ground_truth import KERNEL_KEYS
from shimstats.table import human_bytes
from shimstats.verify import LABELS

EXIT_OK, EXIT_MISMATCH, EXIT_CANNOT_RUN = 0, 1, 2

EPILOG = """\
what it shows, for each container:
  the real working set    usage - inactive_file, from the cgroup's own files
  verify                  our adapter's Task/Stats, called as containerd does, checked figure by figure
  compare                 one agent answer through our translation (v1, v2) and the Kata shims' mappings

exit codes: 0 our figures verify in every case; 1 they do not, or the demo could not clean up; 2 the demo
could not run; 130 Ctrl-C, 143 SIGTERM (after cleaning up). Takes a few seconds; --keep leaves everything
running until Ctrl-C, to try the other commands."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole path on this machine in one command (a real cgroup as root, else a bundled capture)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--keep", action="store_true", help="keep the cgroup and processes running until Ctrl-C")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cleanup = demo.Cleanup()
    previous = {s: signal.signal(s, demo.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = EXIT_MISMATCH
    try:
        with demo.signals_held():
            # Short (unix socket paths), and named after our pid: a later run removes it should we be killed.
            workdir = Path(tempfile.mkdtemp(prefix=demo.workdir_prefix(os.getpid()), dir=demo.WORK_PARENT))
            cleanup.push(f"remove {workdir}", functools.partial(shutil.rmtree, workdir))
        report = demo.run(cleanup, workdir)
        print(json.dumps(report_json(report), indent=2) if args.json else format_report(report), flush=True)
        code = EXIT_OK if report.ok else EXIT_MISMATCH
        if args.keep:
            print(keep_hint(report), file=sys.stderr, flush=True)
            while True:
                signal.pause()
    except (KeyboardInterrupt, demo.Interrupted) as exc:
        signum = exc.signum if isinstance(exc, demo.Interrupted) else signal.SIGINT
        print("shimstats demo: interrupted, cleaning up", file=sys.stderr)
        code = 128 + signum
    except demo.DemoError as exc:
        print(f"shimstats demo: {exc}", file=sys.stderr)
        code = EXIT_CANNOT_RUN
    finally:
        cleanup.run()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for problem in cleanup.problems:
        print(f"shimstats demo: cleanup: {problem}", file=sys.stderr)
    return EXIT_MISMATCH if cleanup.problems and code == EXIT_OK else code


def _working_set_rows(case: demo.Case) -> list[tuple[str, str, str]]:
    truth = case.truth
    rows = [("the cgroup's own files (truth)", human_bytes(truth.figures.working_set_bytes), "")]
    for fmt, v in case.verifications.items():
        ws = v.result.memory.working_set_bytes if v.result.memory else 0
        verdict = "verified: every figure agrees" if v.ok else f"MISMATCH: {len(v.failures)} figure(s)"
        rows.append((f"shimstats adapter, {fmt} output (live)", human_bytes(ws), verdict))
    for column in case.comparison.columns:
        if column.live or column.key.startswith("ours_") or column.verification is None:
            continue
        check = next(c for c in column.verification.checks if c.figure == "working_set_bytes")
        wrong = [LABELS[c.figure][0] for c in column.verification.failures]
        verdict = "differs: " + ", ".join(wrong) if wrong else "agrees"
        rows.append((column.label, human_bytes(check.reported or 0), verdict))
    return rows


def format_case(number: int, case: demo.Case) -> str:
    truth = case.truth
    inactive_key = KERNEL_KEYS[truth.version].inactive_file
    inactive = truth.stat.get(inactive_key, 0)
    lines = [f"== {number}. {case.setup.title}", *(f"   {d}" for d in case.setup.details), ""]
    lines.append(
        f"real working set (the cgroup's own files): usage {human_bytes(truth.figures.usage_bytes)} - "
        f"{inactive_key} {human_bytes(inactive)} = {human_bytes(truth.figures.working_set_bytes)}"
    )
    lines.append(f"likely story: {explain(truth, case.comparison.container_id).stories[0].text}")
    lines.append("")
    lines.append("working set as each would report it, for the same guest data:")
    lines.append(
        _indent(render_right(("SOURCE", "WORKING SET", "VERDICT"), _working_set_rows(case), text_columns=1))
    )
    lines.append("")
    lines.append("compare: one agent answer through every mapping (* = differs from the guest's own figure):")
    lines.append(_indent(format_comparison(case.comparison)))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else line for line in text.splitlines())


def format_report(report: demo.Report) -> str:
    head = "shimstats demo: guest cgroup -> guest agent -> our adapter -> Task/Stats as containerd calls it"
    parts = [head, *(f"note: {n}" for n in report.notes), ""]
    parts.extend(format_case(i, case) + "\n" for i, case in enumerate(report.cases, 1))
    if report.ok:
        parts.append("result: our figures verify in every case (exit 0)")
    elif not report.cases:
        parts.append("result: nothing could be shown here (see the notes) (exit 1)")
    else:
        parts.append("result: MISMATCH: some of our figures do not verify (exit 1)")
    return "\n".join(parts)


def report_json(report: demo.Report) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "notes": list(report.notes),
        "cases": [
            {
                "key": case.setup.key,
                "title": case.setup.title,
                "details": list(case.setup.details),
                "ok": case.ok,
                "truth": {
                    "source": case.truth.source,
                    "cgroup_version": case.truth.version,
                    "figures": case.truth.figures.to_dict(),
                },
                "verify": {fmt: v.to_json() for fmt, v in case.verifications.items()},
                "compare": case.comparison.to_json(),
            }
            for case in report.cases
        ],
    }


def keep_hint(report: demo.Report) -> str:
    lines = ["kept running until Ctrl-C; try:"]
    for case in report.cases:
        setup = case.setup
        agent = f"--id {setup.container_id} --agent unix://{setup.agent.socket}"
        lines += [
            f"  # {setup.key}",
            f"  shimstats compare {agent} --shim unix://{setup.adapters['v1'].socket}",
            f"  shimstats explain {agent}",
            f"  shimstats verify --shim unix://{setup.adapters['v2'].socket} --id {setup.container_id} "
            f"--cgroup {setup.cgroup_dir}",
        ]
    return "\n".join(lines)
