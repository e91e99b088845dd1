"""FileCache: files stay open between reads, yet every read returns the file's current content."""

from __future__ import annotations

import os
import resource

import pytest

from guest_agent.files import MAX_OPEN, FileCache, default_max_open, is_dir


def test_missing_files_read_as_none_and_are_not_kept(tmp_path):
    cache = FileCache()
    assert cache.read_bytes(str(tmp_path / "absent")) is None
    assert len(cache) == 0
    (tmp_path / "absent").write_text("1\n")  # a file that appears later is found
    assert cache.read_bytes(str(tmp_path / "absent")) == b"1\n"


def test_absent_files_are_remembered_for_absent_for_seconds_only(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr("guest_agent.files.time.monotonic", lambda: now[0])
    cache = FileCache(absent_for=1.0)
    path = str(tmp_path / "absent")
    assert cache.read_bytes(path) is None
    (tmp_path / "absent").write_text("1\n")
    assert cache.read_bytes(path) is None  # still taken as missing: no new open within the second
    now[0] += 1.0
    assert cache.read_bytes(path) == b"1\n"  # then found, and kept open like any other file
    assert len(cache) == 1


def test_files_read_in_one_go_may_be_remembered_absent_when_asked(tmp_path, monkeypatch):
    # read_open(..., absent=True) answers None in the place of a file remembered as absent, as read_bytes
    # would; once the memory runs out it answers None for the whole, and read_bytes opens the file again.
    now = [100.0]
    monkeypatch.setattr("guest_agent.files.time.monotonic", lambda: now[0])
    cache = FileCache(absent_for=1.0)
    here, absent = str(tmp_path / "here"), str(tmp_path / "absent")
    (tmp_path / "here").write_text("Total 0\n")
    assert cache.read_bytes(here) == b"Total 0\n"
    assert cache.read_open([absent, here], absent=True) is None  # never looked for: not known absent
    assert cache.read_bytes(absent) is None
    assert cache.read_open([absent, here]) is None
    assert cache.read_open([absent, here], absent=True) == [None, b"Total 0\n"]
    (tmp_path / "absent").write_text("1\n")
    now[0] += 1.0
    assert cache.read_open([absent, here], absent=True) is None
    assert cache.read_bytes(absent) == b"1\n"
    assert cache.read_open([absent, here], absent=True) == [b"1\n", b"Total 0\n"]
    cache.close()


def test_forget_drops_remembered_absence(tmp_path, monkeypatch):
    monkeypatch.setattr("guest_agent.files.time.monotonic", lambda: 100.0)
    cache = FileCache(absent_for=1.0)
    path = str(tmp_path / "absent")
    assert cache.read_bytes(path) is None
    (tmp_path / "absent").write_text("2\n")
    cache.forget(str(tmp_path))  # what the reader does when a cgroup is found incomplete or gone
    assert cache.read_bytes(path) == b"2\n"


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


def test_a_file_deleted_and_copied_afresh_is_read_from_the_new_inode(tmp_path):
    # Issue 15 §4: after rm and a fresh copy, the kept fd still reads the deleted inode unless checked.
    path = tmp_path / "memory.stat"
    path.write_text("cache 1\n")
    cache = FileCache()
    assert cache.read_bytes(str(path)) == b"cache 1\n"
    path.unlink()
    path.write_text("cache 2\n")
    assert cache.read_bytes(str(path)) == b"cache 2\n"
    assert len(cache) == 1  # the old fd was closed, not leaked
    cache.close()


def test_a_file_replaced_by_rename_is_read_from_the_new_inode(tmp_path):
    path = tmp_path / "memory.current"
    path.write_text("4096\n")
    cache = FileCache()
    assert cache.read_bytes(str(path)) == b"4096\n"
    (tmp_path / "new").write_text("8192\n")
    os.replace(tmp_path / "new", path)  # an atomic replace, as cp --remove-destination or rsync do
    assert cache.read_bytes(str(path)) == b"8192\n"
    cache.close()


def test_files_read_in_one_go_keep_the_inode_check(tmp_path):
    # read_open serves checked files too, but never through the fd of a replaced or deleted inode: it
    # answers None, and read_bytes (the caller's fallback) opens the path again.
    paths = [str(tmp_path / name) for name in ("memory.usage_in_bytes", "memory.failcnt")]
    for path, value in zip(paths, ("4096\n", "0\n")):
        with open(path, "w") as f:
            f.write(value)
    cache = FileCache()
    assert cache.read_open(paths) is None  # not open yet
    assert [cache.read_bytes(p) for p in paths] == [b"4096\n", b"0\n"]
    assert cache.read_open(paths) == [b"4096\n", b"0\n"]
    (tmp_path / "new").write_text("8192\n")
    os.replace(tmp_path / "new", paths[0])
    assert cache.read_open(paths) is None
    assert cache.read_bytes(paths[0]) == b"8192\n"
    assert cache.read_open(paths) == [b"8192\n", b"0\n"]
    os.unlink(paths[1])
    assert cache.read_open(paths) is None
    assert cache.read_bytes(paths[1]) is None
    cache.close()


def test_a_deleted_directory_reads_as_missing(tmp_path):
    (tmp_path / "c1").mkdir()
    path = tmp_path / "c1" / "pids.current"
    path.write_text("3\n")
    cache = FileCache()
    assert cache.read_bytes(str(path)) == b"3\n"
    path.unlink()
    (tmp_path / "c1").rmdir()
    assert cache.read_bytes(str(path)) is None
    assert len(cache) == 0
    cache.close()


def test_files_on_kernfs_devices_skip_the_inode_check(tmp_path):
    # A device listed as kernfs gets no per-read fstat: a replaced regular file on it is (wrongly, but by
    # design) still read through the old fd. This is what makes the live path one pread per file.
    path = tmp_path / "f"
    path.write_text("1\n")
    cache = FileCache(kernfs_devices=[os.stat(tmp_path).st_dev])
    assert cache.read_bytes(str(path)) == b"1\n"
    path.unlink()
    path.write_text("2\n")
    assert cache.read_bytes(str(path)) == b"1\n"
    cache.close()


MEMORY_V1 = "/sys/fs/cgroup/memory"


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.isfile(f"{MEMORY_V1}/memory.limit_in_bytes"),
    reason="needs root and the cgroup v1 memory hierarchy",
)
def test_a_cgroup_removed_and_created_again_is_read_afresh_on_kernfs():
    # On cgroupfs a kept fd of a removed cgroup fails with ENODEV: the path is opened once more and finds the
    # new cgroup's file (or nothing). Told apart by the limit written into the first one only.
    directory = f"{MEMORY_V1}/shimstats-files-{os.getpid()}"
    path = f"{directory}/memory.limit_in_bytes"
    cache = FileCache(kernfs_devices=[os.stat(MEMORY_V1).st_dev])
    os.mkdir(directory)
    try:
        with open(path, "w") as f:
            f.write("16777216")
        assert cache.read_bytes(path) == b"16777216\n"
        os.rmdir(directory)
        assert cache.read_bytes(path) is None  # gone: ENODEV, then not found
        assert len(cache) == 0
        os.mkdir(directory)
        assert cache.read_bytes(path) != b"16777216\n"  # the new cgroup's own (unlimited) value
        first = cache.read_bytes(path)
        os.rmdir(directory)
        os.mkdir(directory)
        assert cache.read_bytes(path) == first  # the ENODEV retry: the old fd is replaced, not trusted
        assert len(cache) == 1
    finally:
        cache.close()
        if os.path.isdir(directory):
            os.rmdir(directory)


def test_the_directory_probe_answers_as_isdir(tmp_path):
    # The reader's and the locator's gone-check opens the directory with O_PATH instead of isdir's stat: the
    # same answer for a directory, a file, nothing, a symlink to a directory and a dangling symlink.
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("1\n")
    (tmp_path / "to-d").symlink_to(tmp_path / "d")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    for name in ("d", "f", "nothing", "to-d", "dangling", "f/below"):
        path = str(tmp_path / name)
        assert is_dir(path) == os.path.isdir(path), name
