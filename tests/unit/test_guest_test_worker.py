"""The guest-test workload process, driven over its pipes as the guest side drives it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shimstats.guest_test import phases


def test_the_worker_answers_each_step_and_keeps_going_after_a_bad_one(tmp_path: Path) -> None:
    data, shm = tmp_path / "data", tmp_path / "shm"
    data.mkdir()
    shm.mkdir()
    worker = subprocess.Popen(
        [sys.executable, "-m", "shimstats.guest_test.worker", str(data), str(shm)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdin is not None
        status, _, hello = worker.stdout.readline().partition(" ")
        assert status == "ok"
        assert json.loads(hello) == {"pid": worker.pid}
        worker.stdin.write("no-such-step\nshmem\n")
        worker.stdin.flush()
        assert worker.stdout.readline().startswith("error unknown step 'no-such-step'")
        status, _, answer = worker.stdout.readline().partition(" ")
        assert status == "ok"
        written = Path(json.loads(answer)["file"])
        assert written.parent == shm
        assert written.stat().st_size == phases.SHMEM_MIB * phases.MIB
    finally:
        worker.kill()
        worker.wait(10)
