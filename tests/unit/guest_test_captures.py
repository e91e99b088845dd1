"""The captures `shimstats guest-test` saved (tests/fixtures/cgroupfs/<kernel>-<v1|v2>-<phase>) and our
adapter's answers for them: shared by the guest-test checks, evaluate and report tests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from shimstats import translate
from shimstats.compare import as_result
from shimstats.fake_containerd import StatsResult
from shimstats.guest_test.evaluate import LIVE, capture_truth
from shimstats.guest_test.phases import PHASES, Phase

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroupfs"


def guest_test_fixtures() -> list[tuple[Path, Phase]]:
    """Fixtures `shimstats guest-test` saved: named <kernel>-<v1|v2>-<phase>."""
    found = []
    for directory in sorted(FIXTURES.iterdir()):
        for phase in PHASES:
            head = directory.name.removesuffix(f"-{phase.name}")
            if (
                head != directory.name
                and head.endswith(("-v1", "-v2"))
                and (directory / "meta.json").exists()
            ):
                found.append((directory, phase))
    return found


def container_fixtures() -> list[Path]:
    """Every fixture of a container (not a root cgroup), from any capture run."""
    return [
        d
        for d in sorted(FIXTURES.iterdir())
        if (d / "meta.json").exists() and json.loads((d / "meta.json").read_text())["container_path"] != "/"
    ]


GUEST_TEST = guest_test_fixtures()
ids = [d.name for d, _ in GUEST_TEST]


def our_answers(fixture: Path, phase: Phase) -> dict[str, StatsResult | str]:
    """What our adapter answers for this capture: our translation of the agent's reading, per format."""
    response = asyncio.run(capture_truth(fixture, phase.cgroup_path)).response
    return {key: as_result(phase.container_id, translate.translate(response, fmt)) for key, _, fmt in LIVE}
