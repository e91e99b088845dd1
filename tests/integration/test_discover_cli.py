"""`shimstats discover` as a process, against Kata shim stand-ins (tests/kata_standins.py), a hybrid-vsock
muxer in front of real agents (ours and a stock kata-agent stand-in), and for the names a real containerd 1.6
whose containers carry the labels and annotation containerd's CRI plugin writes (the test containerd runs
without the CRI plugin, so this is the containers-API fallback; CRI listings are tested in
tests/integration/test_kube_names.py against a CRI stand-in).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shimstats.kube_names import (
    list_names,
)
from tests.containerd_env import Containerd
from tests.integration.cri_records import NS
from tests.integration.cri_records import delete_record as _delete
from tests.integration.cri_records import pod_record as _pod_container
from tests.integration.harness import CLI, REPO
from tests.kata_standins import KATA_PORT, HybridVsockMuxer, KataShimStandIn, container_fixtures, guest


async def discover(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, "discover", *args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_every_sandbox_its_address_and_health(sock_dir: Path) -> None:
    go_root, rs_root = sock_dir / "sbs", sock_dir / "kata"
    mux_path = sock_dir / "clh.sock"
    url_a = f"hvsock://{mux_path}:{KATA_PORT}"
    no_cri = f"unix://{sock_dir}/no-cri.sock"
    async with guest(container_fixtures()[0], sock_dir) as agents, HybridVsockMuxer(mux_path, agents):
        with (
            KataShimStandIn(go_root, "pod-a", url_a),
            KataShimStandIn(rs_root, "pod-b", "hvsock:///nonexistent/clh.sock:1024", flavor="rs"),
            KataShimStandIn(go_root, "pod-c", error="sandbox not running"),
        ):
            roots = ("--kata-root", str(go_root), "--kata-root", str(rs_root))
            code, out, err = await discover(*roots, "--cri", no_cri, "--timeout", "2", "--json")
            kata_code, kata_out, _ = await discover(
                *roots, "--cri", no_cri, "--agent-port", "kata-agent", "--json"
            )
            table_code, table, _ = await discover(*roots, "--cri", no_cri)
    assert code == 1, err  # pod-b and pod-c have no reachable agent
    assert "unreachable" not in err  # said once, in pod-b's report, not again by the agent client's logger
    answer = json.loads(out)
    by_id = {s["id"]: s for s in answer["sandboxes"]}
    assert sorted(by_id) == ["pod-a", "pod-b", "pod-c"]
    a, b, c = by_id["pod-a"], by_id["pod-b"], by_id["pod-c"]
    assert (a["agent_url"], a["address"]) == (url_a, f"hvsock://{mux_path}:2048")
    assert (a["agent_ok"], a["kata_agent_ok"], a["errors"]) == (True, True, [])
    assert a["containers"] == []  # no CRI, no containerd here: the sandbox id alone
    assert b["address"] == "hvsock:///nonexistent/clh.sock:2048"
    assert (b["agent_ok"], b["kata_agent_ok"]) == (False, False)
    assert any("/nonexistent/clh.sock" in e for e in b["errors"])
    assert (c["agent_url"], c["address"], c["agent_ok"]) == (None, None, False)
    [error] = c["errors"]
    assert error == f"Kata shim at {go_root}/pod-c/shim-monitor.sock: GET /agent-url answered HTTP 500: " + (
        "sandbox not running"
    )
    assert answer["names_from"] == "none"
    assert all("no-cri.sock" in note for note in answer["names_notes"])

    assert kata_code == 1
    kata_a = next(s for s in json.loads(kata_out)["sandboxes"] if s["id"] == "pod-a")
    assert kata_a["address"] == url_a  # Kata's port kept: the stock kata-agent answers there
    assert kata_a["agent_ok"] is True

    assert table_code == 1
    assert "pod-a" in table
    assert url_a in table
    assert "HTTP 500" in table


@pytest.mark.slow
async def test_all_agents_answering_is_exit_0_and_no_root_is_exit_2(sock_dir: Path) -> None:
    mux_path = sock_dir / "clh.sock"
    no_cri = f"unix://{sock_dir}/no-cri.sock"
    async with guest(container_fixtures()[0], sock_dir) as agents, HybridVsockMuxer(mux_path, agents):
        with KataShimStandIn(sock_dir / "sbs", "pod-a", f"hvsock://{mux_path}:{KATA_PORT}"):
            code, out, err = await discover("--kata-root", str(sock_dir / "sbs"), "--cri", no_cri)
            none_code, none_out, none_err = await discover(
                "--kata-root", str(sock_dir / "sbs"), "--cri", "none", "--json"
            )
    assert code == 0, err
    assert "pod-a" in out
    # --cri none, as the exporter takes it: no names asked for, the sandbox by its id alone
    assert none_code == 0, none_err
    none_answer = json.loads(none_out)
    assert [s["id"] for s in none_answer["sandboxes"]] == ["pod-a"]
    assert (none_answer["names_from"], none_answer["names_notes"]) == (
        "none",
        ["--cri none: no names asked for"],
    )
    code, out, err = await discover("--kata-root", str(sock_dir / "nothing-here"), "--cri", no_cri)
    assert code == 2
    assert f"{sock_dir}/nothing-here" in err
    assert "Traceback" not in err
    code, out, err = await discover("--kata-root", str(sock_dir), "--cri", no_cri, "--json")
    assert code == 0  # a root without sandboxes: nothing is unhealthy
    assert json.loads(out)["sandboxes"] == []
    for bad in (("--cri", "tcp://10.0.0.1:10010"), ("--agent-port", "0"), ("--agent-port", "kata")):
        code, out, err = await discover("--kata-root", str(sock_dir), *bad)
        assert code == 2
        assert f"argument {bad[0]}" in err
        assert "Traceback" not in err


# -- names from containerd (the CRI plugin's labels and annotation; the containers API fallback) --------


def _names(containerd: Containerd) -> dict[str, Any]:
    names = list_names(f"unix://{containerd.address}")
    return {
        "source": names.source,
        "pods": {k: (v.pod, v.namespace) for k, v in names.pods().items()},
        "containers": {c.id: (c.sandbox_id, c.pod, c.namespace, c.container) for c in names.containers},
        "notes": names.notes,
    }


@pytest.mark.containerd
def test_names_follow_containers_through_restart_and_pod_deletion(
    containerd: Containerd, sock_dir: Path
) -> None:
    sandbox = _pod_container(containerd, sock_dir, "sbx-web", "web-0", kind="sandbox")
    app = _pod_container(
        containerd, sock_dir, "app-1", "web-0", kind="container", name="nginx", sandbox=sandbox
    )
    try:
        first = _names(containerd)
        assert first["source"] == "containerd"
        assert "UNIMPLEMENTED" in first["notes"][0]  # this containerd has no CRI plugin: it says so
        assert first["pods"]["sbx-web"] == ("web-0", "shop")
        assert first["containers"] == {
            "app-1": ("sbx-web", "web-0", "shop", "nginx")
        }  # the pause one is the pod

        with KataShimStandIn(sock_dir / "sbs", "sbx-web", "hvsock:///nonexistent/clh.sock:1024"):
            code, out, _ = asyncio.run(
                discover(
                    "--kata-root", str(sock_dir / "sbs"), "--cri", f"unix://{containerd.address}", "--json"
                )
            )
        assert code == 1  # no agent behind the stand-in
        [row] = json.loads(out)["sandboxes"]
        assert (row["pod"], row["namespace"]) == ("web-0", "shop")
        assert row["containers"] == [
            {"id": "app-1", "pod": "web-0", "namespace": "shop", "container": "nginx", "image": ""}
        ]

        _delete(containerd, app)  # the kubelet restarts a container: a new id in the same pod
        app = _pod_container(
            containerd, sock_dir, "app-2", "web-0", kind="container", name="nginx", sandbox=sandbox
        )
        assert _names(containerd)["containers"] == {"app-2": ("sbx-web", "web-0", "shop", "nginx")}

        _delete(containerd, app)  # the pod is deleted
        _delete(containerd, sandbox)
        gone = _names(containerd)
        assert gone["containers"] == {}
        assert "sbx-web" not in gone["pods"]
    finally:
        listed = containerd.ctr("containers", "list", "-q", namespace=NS).stdout.split()
        for cid in {app, sandbox} & set(listed):
            _delete(containerd, cid)
