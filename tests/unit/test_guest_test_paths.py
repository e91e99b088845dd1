"""Where guest-test writes: two runs at once share no path, and fixtures go only where --fixtures says.

A concurrent run once read another run's console (both wrote <cache>/console-v2.log) and called a clean guest
"did not end cleanly"; and a run from a checkout wrote tests/fixtures/cgroupfs/<kernel>-* into that checkout.
These are decisions about paths, checked here without booting qemu (tests/integration/test_guest_test_run.py
boots it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
from pathlib import Path

import pytest

from shimstats import demo
from shimstats.commands import guest_test
from shimstats.guest_test import qemu, session
from shimstats.guest_test.image import Kernel

KERNEL = Kernel(Path("/k/vmlinuz"), Path("/k/initrd.cpio"), "6.1.0-test", "test kernel", ())


def _settings(cache: Path, keep: bool = False) -> session.Settings:
    return session.Settings(KERNEL, qemu.TCG, "test", cache, None, ("empty",), lambda _: None, keep)


def _written_by_qemu(argv: list[str]) -> set[Path]:
    """The paths qemu writes: the console (-serial file:), the port sockets (-chardev path=), the disks."""
    paths: set[Path] = set()
    for flag, value in zip(argv, argv[1:]):
        if flag == "-serial":
            paths.add(Path(value.removeprefix("file:")))
        elif flag in ("-chardev", "-drive"):
            for option in value.split(","):
                key, _, path = option.partition("=")
                if key in ("path", "file"):
                    paths.add(Path(path))
    return paths


@pytest.mark.skipif(shutil.which(qemu.QEMU) is None, reason="the machine description asks qemu its version")
def test_two_runs_at_once_share_no_path(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    first, second = demo.Cleanup(), demo.Cleanup()
    try:
        runs = [session.Session(_settings(cache), "v2", cleanup) for cleanup in (first, second)]
        written = []
        for run in runs:
            disks = (run.workdir / "data.img", run.workdir / "swap.img")
            paths = _written_by_qemu(run.qemu_argv(disks))
            assert run.result.console in paths
            assert len(paths) == 1 + 3 + 2  # console, three serial-port sockets, two disks
            assert all(path.is_relative_to(run.workdir) for path in paths), paths
            assert not run.workdir.is_relative_to(cache)
            written.append(paths | {run.workdir})
        assert not written[0] & written[1]
        assert all(run.workdir.is_dir() for run in runs)
    finally:
        first.run()
        second.run()
    assert not any(run.workdir.exists() for run in runs)  # removed unless --keep


@pytest.mark.skipif(shutil.which(qemu.QEMU) is None, reason="the machine description asks qemu its version")
def test_keep_leaves_the_private_directory_and_says_where(tmp_path: Path) -> None:
    cleanup = demo.Cleanup()
    run = session.Session(_settings(tmp_path, keep=True), "v1", cleanup)
    try:
        cleanup.run()
        assert run.result.kept == run.workdir
        assert run.workdir.is_dir()
    finally:
        shutil.rmtree(run.workdir)


def test_the_console_copy_in_the_cache_is_replaced_whole(tmp_path: Path) -> None:
    cache, console = tmp_path / "cache", tmp_path / "private" / "console-v2.log"
    cache.mkdir()
    console.parent.mkdir()
    (cache / "console-v2.log").write_text("another run's console\n")
    console.write_text("this run's console\nSHIMSTATS-GUEST-OK\n")
    published = session.publish_console(console, cache, "v2")
    assert published == cache / "console-v2.log"
    assert published.read_text() == console.read_text()
    assert sorted(p.name for p in cache.iterdir()) == ["console-v2.log"]  # no staging file left
    assert session.publish_console(tmp_path / "none.log", cache, "v2") is None  # no console: nothing to copy
    assert published.read_text() == console.read_text()


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    guest_test.add_parser(parser.add_subparsers())
    return parser.parse_args(["guest-test", *argv])


def test_fixtures_are_saved_only_where_fixtures_dir_says(tmp_path: Path) -> None:
    # This test runs from a checkout that has tests/fixtures/cgroupfs: that is no reason to write there.
    assert guest_test.fixtures_dir(_parse()) is None
    assert guest_test.fixtures_dir(_parse("--no-fixtures")) is None
    assert guest_test.fixtures_dir(_parse("--fixtures", str(tmp_path))) == tmp_path


def _capture(directory: Path, name: str, marker: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "meta.json").write_text(json.dumps({"name": name}))
    for n in range(20):
        (directory / f"file{n}").write_text(marker)
    return directory


def test_runs_saving_the_same_fixture_at_once_leave_one_whole_copy(tmp_path: Path) -> None:
    fixtures = tmp_path / "fixtures"
    captures = [_capture(tmp_path / f"run{n}", "6.1.0-v2-empty", f"run {n}") for n in range(8)]
    errors: list[BaseException] = []

    def save(capture: Path) -> None:
        try:
            for _ in range(10):
                session.save_fixture(capture, fixtures)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(capture,)) for capture in captures]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [p.name for p in fixtures.iterdir()] == ["6.1.0-v2-empty"]  # no staging or old copies left
    saved = fixtures / "6.1.0-v2-empty"
    markers = {(saved / f"file{n}").read_text() for n in range(20)}
    assert len(markers) == 1  # one run's capture, whole
