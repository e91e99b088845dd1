"""A phase's verdict on real guest-test captures: our answers pass, a Kata mapping's defects show, an
error or a phase that did not do its job fails the phase."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from shimstats.compare import as_result
from shimstats.emulate import kata_go
from shimstats.fake_containerd import StatsResult
from shimstats.guest_test.evaluate import PhaseResult, capture_truth, evaluate
from shimstats.guest_test.phases import BY_NAME, Phase
from shimstats.guest_test.report import format_phase
from tests.unit.guest_test_captures import GUEST_TEST, ids, our_answers


def judged(fixture: Path, phase: Phase, answers: dict[str, StatsResult | str]) -> PhaseResult:
    return asyncio.run(evaluate(phase, fixture, fixture, answers))


@pytest.mark.parametrize(("fixture", "phase"), GUEST_TEST, ids=ids)
def test_our_answers_agree_on_every_capture(fixture: Path, phase: Phase) -> None:
    result = judged(fixture, phase, our_answers(fixture, phase))
    assert [c.key for c in result.live] == ["ours_v1", "ours_v2"]
    assert result.ok, format_phase(1, result)
    assert {c.key for c in result.columns if not c.live} == {"kata_go_v1_host", "kata_go_v2_host", "kata_rs"}
    assert json.dumps(result.to_json())


def v2_capture(name: str) -> tuple[Path, Phase]:
    return next((d, p) for d, p in GUEST_TEST if p.name == name and "-v2-" in d.name)


def test_kata_go_on_a_v1_host_counts_inactive_file_as_used() -> None:
    """A v2 guest's page cache through the Kata Go shim on a v1 host: working set = usage (#10280)."""
    fixture, phase = v2_capture("pagecache")
    result = judged(fixture, phase, our_answers(fixture, phase))
    kata = next(c for c in result.columns if c.key == "kata_go_v1_host")
    assert not kata.ok
    assert kata.verification is not None
    failures = {c.figure: c.cause for c in kata.verification.failures}
    assert "inactive_file not subtracted" in failures["working_set_bytes"]
    assert result.ok, "the Kata columns are shown, never part of the verdict"


def test_a_kata_answer_in_a_live_column_fails_the_phase() -> None:
    fixture, phase = v2_capture("pagecache")
    answers = our_answers(fixture, phase)
    response = asyncio.run(capture_truth(fixture, phase.cgroup_path)).response
    answers["ours_v1"] = as_result(phase.container_id, kata_go.metrics(response, "v1"))
    result = judged(fixture, phase, answers)
    assert not result.ok
    assert not result.live[0].ok
    assert result.live[1].ok


def test_an_adapter_error_or_the_wrong_format_fails_the_phase() -> None:
    fixture, phase = v2_capture("shmem")
    answers = our_answers(fixture, phase)
    wrong = answers["ours_v2"]
    answers["ours_v1"] = "TtrpcError: UNAVAILABLE: agent gone"
    result = judged(fixture, phase, answers)
    assert result.live[0].error == "TtrpcError: UNAVAILABLE: agent gone"
    assert not result.ok
    answers = our_answers(fixture, phase)
    answers["ours_v1"] = wrong
    result = judged(fixture, phase, answers)
    assert "asked for v1 Metrics, got" in result.live[0].error


def test_a_phase_that_did_not_do_its_job_fails_even_when_the_figures_agree() -> None:
    """The pagecache capture judged as the "empty" phase: figures agree, but a process is in the cgroup."""
    fixture, _ = v2_capture("pagecache")
    empty = BY_NAME["empty"]
    result = judged(fixture, empty, our_answers(fixture, empty))
    assert all(c.ok for c in result.live)
    assert result.effects == (("no process in it", False),)
    assert not result.ok
