"""guest-test's output: a table per phase and a verdict for people, one JSON object for CI.

Rows are figures, columns the guest's own files and each answer; a value marked ``*`` differs from the
guest's (the causes are listed under the table). Only the live columns (ours, through the adapter) decide
the verdict; the Kata columns show what today's shims would report for the same guest data.
"""

from __future__ import annotations

from typing import Any

from shimstats.ground_truth import FIGURE_NAMES
from shimstats.guest_test import checks
from shimstats.guest_test.evaluate import Column, PhaseResult
from shimstats.guest_test.session import ModeRun
from shimstats.table import render_right
from shimstats.verify import LABELS, show_figure


def _cell(text: str, differs: bool) -> str:
    return text + (" *" if differs else "  ")


def guest_cells(result: PhaseResult) -> dict[str, str]:
    """Every row's figure as the guest's files give it, in report order."""
    values = {LABELS[n][0]: show_figure(n, getattr(result.truth.figures, n)) for n in FIGURE_NAMES}
    extra = {**result.raw.expected("v1"), **result.raw.expected("v2")}
    for figure in checks.ordered(extra):
        values[figure] = checks.show(figure, extra[figure])
    return values


def column_cells(column: Column) -> dict[str, str]:
    """A column's cells; a figure its Metrics format does not carry has none (a blank, not a difference)."""
    if column.verification is None:
        return {}
    out = {}
    for c in column.verification.checks:
        out[LABELS[c.figure][0]] = _cell(show_figure(c.figure, c.reported), not c.ok)
    for f in column.figures:
        out[f.figure] = _cell(checks.show(f.figure, f.reported), not f.ok)
    return out


def phase_table(result: PhaseResult) -> str:
    columns = [(c.label, column_cells(c)) for c in result.columns]
    rows = []
    for figure, value in guest_cells(result).items():
        rows.append([figure, _cell(value, False), *(values.get(figure, "") for _, values in columns)])
    return render_right(["FIGURE", "guest files", *(label for label, _ in columns)], rows)


def problems(column: Column) -> list[str]:
    """A column's differences in words, the block I/O ones folded into one line per cause."""
    if column.error:
        return [column.error]
    out = [f"{c.figure}: {c.cause}" for c in column.verification.failures] if column.verification else []
    io: dict[str, list[str]] = {}
    for f in column.figures:
        if f.ok:
            continue
        if f.figure.startswith("io "):
            io.setdefault(f.why, []).append(f.figure.split()[1])
        else:
            out.append(f"{f.figure}: {f.why}")
    for why, devices in io.items():
        out.append(f"io of {', '.join(dict.fromkeys(devices))}: {why}")
    return out


def format_phase(number: int, result: PhaseResult) -> str:
    p = result.phase
    lines = [f"-- phase {number}: {p.name}: {p.title} (container {p.container_id}, cgroup {p.cgroup_path})"]
    lines.append(f"   workload: {p.workload}")
    if result.notes:
        lines.append("   guest notes: " + ", ".join(f"{k}={v}" for k, v in result.notes.items()))
    effects = "; ".join(f"{text} {'yes' if ok else 'NO'}" for text, ok in result.effects)
    lines.append(f"   the phase did its job: {effects}")
    lines.append("")
    lines.extend("  " + line for line in phase_table(result).splitlines())
    for column in result.columns:
        found = problems(column)
        if found:
            lines.append(f"   {column.label}: " + "; ".join(found))
    verdict = "ours agree with the guest's files" if result.ok else "MISMATCH: see the live columns above"
    lines.append(f"   verdict: {verdict}")
    if result.fixture:
        lines.append(f"   capture saved as {result.fixture}")
    return "\n".join(lines)


def format_run(run: ModeRun) -> str:
    lines = [
        f"== guest-test, cgroup {run.mode}: kernel {run.kernel.release} ({run.kernel.source})",
        f"   {run.accel}",
        f"   took {run.seconds:g} s; guest console: {run.console}",
    ]
    if run.kept is not None:
        lines.append(f"   kept: {run.kept} (disk images, each phase's captures, adapter and qemu logs)")
    facts = run.facts
    if facts:
        swap = ", ".join(facts.get("swap", [])) or "none"
        lines.append(
            f"   guest: memory {facts.get('memory')}, swap {swap}, transparent huge pages {facts.get('thp')}"
        )
    lines.append("")
    for number, result in enumerate(run.phases, 1):
        lines.append(format_phase(number, result))
        lines.append("")
    missing = [name for name in run.phases_wanted if name not in {p.phase.name for p in run.phases}]
    if run.error:
        lines.append(f"error: {run.error}")
    if missing:
        lines.append(f"phases not run: {', '.join(missing)}")
    lines.append(f"cgroup {run.mode}: {'every phase agrees' if run.ok else 'FAILED'}")
    return "\n".join(lines)


def format_report(runs: list[ModeRun]) -> str:
    parts = [format_run(run) for run in runs]
    ok = bool(runs) and all(run.ok for run in runs)
    parts.append("result: " + ("every phase agrees (exit 0)" if ok else "FAILED (exit 1)"))
    return "\n\n".join(parts)


def report_json(runs: list[ModeRun]) -> dict[str, Any]:
    return {
        "ok": bool(runs) and all(run.ok for run in runs),
        "runs": [
            {
                "cgroup": run.mode,
                "ok": run.ok,
                "error": run.error or None,
                "kernel": {"release": run.kernel.release, "source": run.kernel.source},
                "accel": run.accel,
                "machine": run.machine,
                "seconds": run.seconds,
                "console": str(run.console),
                "facts": run.facts,
                "phases_wanted": list(run.phases_wanted),
                "phases": [p.to_json() for p in run.phases],
            }
            for run in runs
        ],
    }
