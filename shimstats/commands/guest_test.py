"""`shimstats guest-test`: boot a real guest kernel under qemu, run our agent in it, verify every phase.

For a Kata operator about to change the guest kernel or image: it boots the kernel with 1 GiB of RAM, an
ext4 data disk and a swap disk, starts this shimstats' guest agent inside (the host's own Python, shared
read-only over 9p; the agent listens on virtio-serial ports, as Kata 1.x's agent did), and our adapter on
the host in front of it, once per Metrics format. Then it runs workloads in a container cgroup that move
every number that matters, and at each phase, with the cgroup frozen, checks what containerd would get
from our adapter against the guest's own cgroup files captured around the call. The same guest data is
also shown as the Kata Go shim and runtime-rs would report it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from shimstats import demo
from shimstats.guest_test import image, qemu, report, session
from shimstats.guest_test.phases import PHASES

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2

EPILOG = f"""\
phases (in one container cgroup unless said otherwise; each builds on the one before):
{chr(10).join(f"  {p.name:<11} {p.title}" for p in PHASES)}

what is checked, per phase, for our v1 and v2 Metrics (live, through the adapter):
  CRI's usage, working set, available, rss, page faults, major faults; CPU total/user/system; the memory
  limit, limit hits (memory.events max / failcnt), swap, block I/O per device, pids and pids limit;
  and that the phase did what it is for (page cache, huge pages, shmem, swap and limit hits, an OOM kill)

kernels (--kernel):
  debian                  Debian's current linux-image-amd64 (apt-get download)
  FILE.deb                a kernel package, e.g. from `make bindeb-pkg`
  DIR                     DIR/vmlinuz (or boot/vmlinuz-*, or a build tree's arch/x86/boot/bzImage) with
                          its modules in DIR/lib/modules/RELEASE (`make modules_install INSTALL_MOD_PATH=DIR`)
                          or, for a build tree, next to their sources
  FILE                    a bzImage with virtio, virtio-serial, ext4 and 9p built in
The guest needs virtio-pci, virtio-blk, virtio-console, ext4 and 9p over virtio (as modules or built in),
cgroups, and for every phase: swap, memcg swap accounting and transparent huge pages.

files: the kernel, its initramfs and the downloads are cached in $SHIMSTATS_CACHE/guest-test (default
~/.cache/shimstats/guest-test), with a copy of the guest console of the last run to finish
(console-v2.log). Everything else a run writes (disks, sockets, its console, captures, logs) is in a
private directory under /tmp, removed at the end (--keep keeps it), so runs at the same time on one
machine share nothing but that cache. Each phase's capture is saved as a fixture,
DIR/<kernel>-<mode>-<phase>/, only with --fixtures DIR (e.g. --fixtures tests/fixtures/cgroupfs in a
checkout, to commit them); nothing is written into the checkout or the installed package otherwise.

needs: qemu-system-x86_64 and mkfs.ext4 (apt-get install qemu-system-x86 e2fsprogs), apt-get and dpkg-deb
for Debian packages. No root, no loop devices. KVM is used when it can run the kernel, else TCG (a few
minutes at most).

exit codes: 0 every phase agrees; 1 a phase does not, or the cleanup failed; 2 the run could not be
completed (no kernel, no qemu, the guest did not come up); 130 Ctrl-C, 143 SIGTERM (after cleaning up)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "guest-test",
        help="boot a guest kernel under qemu with our agent inside and verify every phase end to end",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kernel", default="debian", metavar="debian|PATH", help="the guest kernel (see below)")
    p.add_argument(
        "--cgroup", choices=("v2", "v1", "both"), default="v2", help="guest cgroup mode (default: v2)"
    )
    p.add_argument(
        "--accel", choices=("auto", "kvm", "tcg"), default="auto", help="auto: KVM if it runs this kernel"
    )
    p.add_argument(
        "--phase",
        action="append",
        choices=[phase.name for phase in PHASES],
        metavar="NAME",
        help="run only these phases (repeatable; default: all, in order). Phases build on each other: "
        "one run without those before it may miss its effects (pressure needs what anon-thp and shmem hold)",
    )
    place = p.add_mutually_exclusive_group()
    place.add_argument(
        "--fixtures", type=Path, metavar="DIR", help="save each phase's capture as a fixture in DIR"
    )
    place.add_argument(
        "--no-fixtures", action="store_true", help="do not save the captures (the default; kept for scripts)"
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (disk images, every capture, adapter logs) and print its path",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.set_defaults(run=run)


def fixtures_dir(args: argparse.Namespace) -> Path | None:
    """Where to save the captures: only where --fixtures says (never a default inside a checkout or the
    installed package: a run from one tree must not rewrite that tree's test data)."""
    return None if args.no_fixtures else args.fixtures


def progress(text: str) -> None:
    print(f"shimstats guest-test: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    cleanup = demo.Cleanup()
    previous = {s: signal.signal(s, demo.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = EXIT_CANNOT_RUN
    try:
        session.check_tools()
        cache = image.cache_root()
        kernel = image.build(args.kernel, cache, progress)
        accel, reason = qemu.choose_accel(kernel, args.accel, cache)
        fixtures = fixtures_dir(args)
        wanted = [phase.name for phase in PHASES if args.phase is None or phase.name in args.phase]
        settings = session.Settings(
            kernel, accel, reason, cache, fixtures, tuple(wanted), progress, args.keep
        )
        modes = ("v2", "v1") if args.cgroup == "both" else (args.cgroup,)
        runs = [asyncio.run(session.Session(settings, mode, cleanup).run()) for mode in modes]
        print(json.dumps(report.report_json(runs), indent=2) if args.json else report.format_report(runs))
        code = EXIT_OK if all(r.ok for r in runs) else EXIT_FAILED
    except (image.ImageError, qemu.QemuError, session.GuestTestError) as exc:
        print(f"shimstats guest-test: {exc}", file=sys.stderr)
    except (KeyboardInterrupt, demo.Interrupted) as exc:
        signum = exc.signum if isinstance(exc, demo.Interrupted) else signal.SIGINT
        print("shimstats guest-test: interrupted, cleaning up", file=sys.stderr)
        code = 128 + signum
    finally:
        cleanup.run()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for problem in cleanup.problems:
        print(f"shimstats guest-test: cleanup: {problem}", file=sys.stderr)
    return EXIT_FAILED if cleanup.problems and code == EXIT_OK else code
