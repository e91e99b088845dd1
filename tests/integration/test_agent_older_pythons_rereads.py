"""The reader's later reads under CPython 3.9 and 3.10: the fast paths taken once a cgroup's files are open
(the one-go reads, memory.stat by its kept spelling) compile their patterns greedy there
(guest_agent.parse.compile_fast_path), and tests/integration/test_agent_older_pythons.py asks each agent for
one answer only. Here each captured fixture's container is read three times by one reader, as a captured
tree and as kernfs, and each read must equal a fresh reader's first read, under each older CPython found.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.harness import REPO
from tests.integration.test_agent_older_pythons import OLDER

SCRIPT = """
import json, os
from guest_agent.files import ABSENT_FOR, FileCache
from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader

base = "tests/fixtures/cgroupfs"
read = 0
for name in sorted(os.listdir(base)):
    root = os.path.join(base, name)
    if not os.path.isdir(os.path.join(root, "cgroup")):
        continue
    path = json.load(open(os.path.join(root, "meta.json")))["container_path"]
    layout = detect_layout(root + "/cgroup")
    for kernfs in (False, True):
        devices = [os.stat(root + "/cgroup").st_dev] if kernfs else ()
        files = FileCache(kernfs_devices=devices, absent_for=ABSENT_FOR)
        reader = CgroupReader(layout, meminfo=root + "/meminfo", files=files, clk_tck=100)
        fresh = CgroupReader(layout, meminfo=root + "/meminfo", clk_tck=100).read(path)
        for _ in range(3):
            assert reader.read(path) == fresh, name
        assert reader._where[path].dirs["memory"].stat_spelling is not None, name
        read += 1
print(read)
"""


@pytest.mark.skipif(not OLDER, reason="no CPython 3.9 or 3.10 with protobuf on this machine")
@pytest.mark.parametrize("python", OLDER)
def test_later_reads_give_a_fresh_readers_record_under_an_older_python(python: str) -> None:
    done = subprocess.run(
        [python, "-c", SCRIPT],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    fixtures = [p for p in (REPO / "tests/fixtures/cgroupfs").iterdir() if (p / "cgroup").is_dir()]
    assert int(done.stdout) == 2 * len(fixtures)
