"""The proxy's TOML file: defaults, refusals naming the key, agent templates, finding the inner shim."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from shimstats.discovery import KataSpec, parse_kata_spec
from shimstats.proxy import BINARY
from shimstats.proxy.config import ConfigError, expand_agent, load_config, parse_config, resolve_inner_shim

MINIMAL = {"inner_shim": "containerd-shim-kata-v2", "agent": "hvsock:///run/vc/vm/{sandbox}/clh.sock:2048"}


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config(MINIMAL, "/etc/shimstats/kata.toml")
    assert (config.metrics_format, config.stats_fallback, config.inner_config_path) == ("auto", "inner", "")
    assert config.stats_timeout == 10.0
    assert config.path == "/etc/shimstats/kata.toml"


def test_every_key_is_read() -> None:
    data = {
        **MINIMAL,
        "metrics_format": "v2",
        "stats_fallback": "error",
        "inner_config_path": "/opt/kata/configuration-clh.toml",
        "stats_timeout": 3,
    }
    config = parse_config(data)
    assert (config.metrics_format, config.stats_fallback) == ("v2", "error")
    assert config.inner_config_path == "/opt/kata/configuration-clh.toml"
    assert config.stats_timeout == 3.0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"inner_shm": "x"}, "inner_shm"),  # a typo must not pass silently
        ({"metrics_format": "v3"}, "metrics_format"),
        ({"stats_fallback": "ignore"}, "stats_fallback"),
        ({"stats_timeout": 0}, "stats_timeout"),
        ({"stats_timeout": True}, "stats_timeout"),
        ({"stats_timeout": "10"}, "stats_timeout"),
        ({"inner_shim": 7}, "inner_shim"),
        ({"inner_shim": ""}, "inner_shim"),
        ({"agent": "unix:///run/{pod}/agent.sock"}, "{pod}"),
        ({"agent": "unix:///run/{}/agent.sock"}, "agent"),
        ({"agent": "tcp://10.0.0.1:2048"}, "agent"),
        ({"agent": "run/{id}.sock"}, "agent"),
    ],
)
def test_mistakes_are_refused_naming_the_key(change: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=r"/etc/kata\.toml") as info:
        parse_config({**MINIMAL, **change}, "/etc/kata.toml")
    assert named in str(info.value)


@pytest.mark.parametrize("missing", ["inner_shim", "agent"])
def test_required_keys(missing: str) -> None:
    data = {key: value for key, value in MINIMAL.items() if key != missing}
    with pytest.raises(ConfigError, match=f"missing key.*{missing}"):
        parse_config(data)


def test_agent_template_expands_every_placeholder() -> None:
    template = "hvsock:///run/vc/{namespace}/{sandbox}/{id}.sock:2048"
    got = expand_agent(template, container_id="c1", sandbox="pod-9", namespace="k8s.io")
    assert got == template.replace("{namespace}", "k8s.io").replace("{sandbox}", "pod-9").replace(
        "{id}", "c1"
    )


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 77])
def test_ids_that_could_leave_the_directory_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="cannot put id"):
        expand_agent("unix:///run/{id}/agent.sock", container_id=bad, sandbox="s", namespace="n")


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(
        'inner_shim = "containerd-shim-runc-v2"\nagent = "unix:///run/a-{id}.sock"\nmetrics_format = "v1"\n'
    )
    config = load_config(str(path))
    assert config.metrics_format == "v1"
    assert (
        config.agent_address(container_id="abc", sandbox="abc", namespace="default")
        == "unix:///run/a-abc.sock"
    )


def test_load_config_names_the_file_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}/absent.toml")):
        load_config(str(tmp_path / "absent.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("inner_shim = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(str(broken))


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_inner_shim_by_name_is_looked_up_on_the_given_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    shim = _executable(second / "containerd-shim-kata-v2")
    assert resolve_inner_shim("containerd-shim-kata-v2", f"{first}{os.pathsep}{second}") == str(shim)
    with pytest.raises(ConfigError, match="not found on PATH"):
        resolve_inner_shim("containerd-shim-kata-v2", str(first))


def test_the_path_lookup_finds_what_shutil_which_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolve_inner_shim looks a name up without shutil (its import cost every start ~7M instructions):
    the same answers as shutil.which for what a PATH can hold in the way."""
    name = "containerd-shim-kata-v2"
    plain, folder, found, later = (tmp_path / d for d in ("plain", "folder", "found", "later"))
    for directory in (plain, folder, found, later):
        directory.mkdir()
    (plain / name).write_text("")  # a file that is not executable
    (folder / name).mkdir()  # a directory of that name (directories are "executable")
    _executable(found / name)
    _executable(later / name)
    monkeypatch.chdir(found)  # an empty PATH entry means the working directory
    paths = [
        os.pathsep.join(str(d) for d in (plain, folder, found, later)),
        os.pathsep.join(str(d) for d in (later, found)),
        os.pathsep.join([str(plain), str(plain), str(folder)]),
        os.pathsep.join(["", str(later)]),
        str(tmp_path / "missing"),
        os.pathsep,
    ]
    for path in paths:
        expected = shutil.which(name, path=path)
        if expected is None:
            with pytest.raises(ConfigError, match="not found on PATH"):
                resolve_inner_shim(name, path)
        else:
            assert resolve_inner_shim(name, path) == os.path.abspath(expected), path


def test_inner_shim_by_path(tmp_path: Path) -> None:
    shim = _executable(tmp_path / "my-shim")
    assert resolve_inner_shim(str(shim), "") == str(shim)
    with pytest.raises(ConfigError, match="absolute"):
        resolve_inner_shim("bin/my-shim", "")
    plain = tmp_path / "not-executable"
    plain.write_text("")
    with pytest.raises(ConfigError, match="not an executable"):
        resolve_inner_shim(str(plain), "")


def test_the_proxy_cannot_be_its_own_inner_shim(tmp_path: Path) -> None:
    _executable(tmp_path / BINARY)
    for name in (BINARY, str(tmp_path / BINARY)):
        with pytest.raises(ConfigError, match="proxy itself"):
            resolve_inner_shim(name, str(tmp_path))


# -- agent = "kata": ask the sandbox's Kata shim ------------------------------------------------------------

KATA = {"inner_shim": "containerd-shim-kata-v2", "agent": "kata"}


def test_agent_kata_defaults_to_our_port_and_both_roots() -> None:
    config = parse_config(KATA)
    assert config.agent_port == 2048
    assert config.kata_roots == ("/run/vc/sbs", "/run/kata")
    spec = config.agent_address(container_id="c1", sandbox="sb1", namespace="k8s.io")
    assert parse_kata_spec(spec) == KataSpec("sb1", 2048, ("/run/vc/sbs", "/run/kata"))


def test_agent_kata_reads_port_and_roots(tmp_path: Path) -> None:
    path = tmp_path / "kata.toml"
    path.write_text(
        'inner_shim = "containerd-shim-kata-v2"\nagent = "kata"\nagent_port = "kata-agent"\n'
        'kata_roots = ["/run/kata"]\n'
    )
    config = load_config(str(path))
    assert (config.agent_port, config.kata_roots) == ("kata-agent", ("/run/kata",))
    spec = config.agent_address(container_id="c1", sandbox="sb1", namespace="default")
    assert parse_kata_spec(spec) == KataSpec("sb1", "kata-agent", ("/run/kata",))


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({**KATA, "agent_port": 0}, "agent_port"),
        ({**KATA, "agent_port": "kata"}, "agent_port"),
        ({**KATA, "kata_roots": []}, "kata_roots"),
        ({**KATA, "kata_roots": "/run/kata"}, "kata_roots"),
        ({**KATA, "kata_roots": ["run/kata"]}, "kata_roots"),
        ({**MINIMAL, "agent_port": 1024}, "agent_port only apply with agent = 'kata'"),
        ({**MINIMAL, "kata_roots": ["/run/kata"]}, "kata_roots only apply"),
    ],
)
def test_kata_settings_mistakes_are_refused(data: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        parse_config(data, "/etc/shimstats/kata.toml")


def test_agent_kata_refuses_a_sandbox_id_that_could_leave_the_directory() -> None:
    with pytest.raises(ConfigError, match="sandbox"):
        parse_config(KATA).agent_address(container_id="c1", sandbox="../x", namespace="k8s.io")
