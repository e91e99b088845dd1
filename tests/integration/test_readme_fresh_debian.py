"""The README's first command, exactly as written, on a fresh Debian 12 as root.

A fresh Debian 12 is debootstrapped (minbase: not even python3), this checkout's tracked files are copied to
/root/shimstats inside it, and the first line of README's "Two commands" block runs there in a chroot with
/proc, /sys and /dev mounted in a private mount namespace (the demo creates a real child cgroup). It must
exit 0 with the demo's verdict, and Debian's python3 it installed must carry the PEP 668 marker that makes a
plain `pip install .` fail, which is why the command makes a venv.

Network: apt (Debian's mirror) and PyPI, as on any fresh machine. When the host's pip trusts an extra CA
bundle (PIP_CERT or SSL_CERT_FILE, e.g. behind a TLS-inspecting proxy), the chroot's pip is given the same
bundle; nothing else of the host's is copied in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.harness import REPO, skip_unless

MIRROR = "http://deb.debian.org/debian"
TIMEOUT = 1500

pytestmark = pytest.mark.slow


def readme_first_command() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    first = block.group(1).splitlines()[0]
    return first.split("  #", 1)[0].strip()


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot)"
    missing = [t for t in ("debootstrap", "unshare", "chroot") if shutil.which(t) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def test_the_first_command_makes_a_venv_because_debian_refuses_pip() -> None:
    command = readme_first_command()
    assert "python3 -m venv .venv" in command
    assert ".venv/bin/pip install ." in command
    assert command.endswith(".venv/bin/shimstats demo")


def test_readme_first_command_works_on_a_fresh_debian_12() -> None:
    skip_unless(_unavailable())
    command = readme_first_command()
    root = Path(tempfile.mkdtemp(prefix="ss-fresh-debian-", dir="/var/tmp"))
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR],
            check=True,
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert not (root / "usr/bin/python3").exists(), "minbase is expected to come without python3"
        checkout = root / "root" / "shimstats"
        checkout.mkdir(parents=True)
        files = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, timeout=60
        ).stdout
        subprocess.run(
            ["tar", "--null", "-T", "-", "-cf", str(root / "checkout.tar")],
            cwd=REPO,
            input=files,
            check=True,
            timeout=120,
        )
        subprocess.run(["tar", "-xf", str(root / "checkout.tar"), "-C", str(checkout)], check=True)
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"]
        env.append("DEBIAN_FRONTEND=noninteractive")
        bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
        if bundle and Path(bundle).is_file():
            shutil.copy(bundle, root / "root" / "host-ca.crt")
            env.append("PIP_CERT=/root/host-ca.crt")
        inner = f"cd /root/shimstats && {command}"
        script = (
            f"mount -t proc proc {root}/proc && mount --rbind /sys {root}/sys && "
            f"mount --rbind /dev {root}/dev && "
            f"exec chroot {root} env -i {' '.join(env)} bash -c '{inner}'"
        )
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert "result: our figures verify in every case (exit 0)" in done.stdout
        markers = list((root / "usr" / "lib").glob("python3.*/EXTERNALLY-MANAGED"))
        assert markers, "Debian's python3 carries the PEP 668 marker: a plain pip install is refused"
        assert (checkout / ".venv" / "bin" / "shimstats").exists()
    finally:
        # the mounts lived in the private namespace of the finished unshare: nothing of the host's is below
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        mounted = [line for line in mountinfo if str(root) in line]
        assert mounted == [], mounted
        shutil.rmtree(root, ignore_errors=True)
