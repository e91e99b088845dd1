"""FileCache: files stay open between reads, yet every read returns the file's current content."""

from __future__ import annotations

import os
import resource

from guest_agent.files import MAX_OPEN, FileCache, default_max_open


def test_missing_files_read_as_none_and_are_not_kept(tmp_path):
    cache = FileCache()
    assert cache.read_bytes(str(tmp_path / "absent")) is None
    assert len(cache) == 0
    (tmp_path / "absent").write_text("1\n")  # a file that appears later is found
    assert cache.read_bytes(str(tmp_path / "absent")) == b"1\n"


def test_reads_follow_in_place_rewrites(tmp_path):
    path = tmp_path / "memory.current"
    path.write_text("4096\n")
    cache = FileCache()
    assert cache.read_bytes(str(path)) == b"4096\n"
    path.write_text("8192000\n")  # truncate and rewrite, same inode: the kept fd sees it
    assert cache.read_bytes(str(path)) == b"8192000\n"
    assert len(cache) == 1
    cache.close()


def test_files_larger_than_one_read_chunk_come_back_whole(tmp_path):
    path = tmp_path / "io.stat"
    data = b"".join(b"%d:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n" % i for i in range(3000))
    assert len(data) > 1 << 16
    path.write_bytes(data)
    cache = FileCache()
    assert cache.read_bytes(str(path)) == data
    cache.close()


def test_at_most_max_open_files_stay_open_least_recent_first_out(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_text(f"{i}\n")
        paths.append(str(p))
    cache = FileCache(max_open=3)
    before = len(os.listdir("/proc/self/fd"))
    for p in paths:
        cache.read_bytes(p)
    assert len(cache) == 3
    assert len(os.listdir("/proc/self/fd")) == before + 3
    assert [cache.read_bytes(p) for p in paths] == [f"{i}\n".encode() for i in range(5)]
    cache.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_forget_closes_only_the_files_under_a_directory(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "ab").mkdir()
    for name in ("a/x", "a/y", "ab/x"):
        (tmp_path / name).write_text("1\n")
    cache = FileCache()
    for name in ("a/x", "a/y", "ab/x"):
        cache.read_bytes(str(tmp_path / name))
    cache.forget(str(tmp_path / "a"))
    assert len(cache) == 1  # "ab/x" is not under "a/"
    cache.close()
    assert len(cache) == 0


def test_default_bound_leaves_most_descriptors_to_sockets():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    bound = default_max_open()
    assert 8 <= bound <= MAX_OPEN
    if soft != resource.RLIM_INFINITY:
        assert bound <= max(8, soft // 4)
