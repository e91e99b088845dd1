"""docs/proxy-shim.md stays true: its TOML snippets parse and say what the code expects."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from shimstats.proxy import BINARY, RUNTIME_TYPE
from shimstats.proxy.config import ProxyConfig, parse_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOC = Path(__file__).resolve().parents[2] / "docs" / "proxy-shim.md"


def _toml_blocks() -> list[dict[str, Any]]:
    text = DOC.read_text(encoding="utf-8")
    return [tomllib.loads(block) for block in re.findall(r"```toml\n(.*?)```", text, flags=re.S)]


def test_the_containerd_snippet_names_our_runtime_and_binary() -> None:
    containerd, _proxy = _toml_blocks()
    runtimes = containerd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    [(name, entry)] = runtimes.items()
    assert entry["runtime_type"] == RUNTIME_TYPE
    # No runtime_path: containerd 1.6.0-1.6.20 and 1.7.0 ignore it (containerd#8207), so the entry that
    # works on every version finds the binary on containerd's PATH, which the doc says how to arrange.
    assert "runtime_path" not in entry
    text = DOC.read_text(encoding="utf-8")
    assert f'ln -s "$(command -v {BINARY})" /usr/local/bin/' in text
    assert "| 1.6.0 – 1.6.20, 1.7.0 | **ignored**" in text
    assert entry["options"]["ConfigPath"].endswith(".toml")
    assert f"handler: {name}" in DOC.read_text(encoding="utf-8")  # the RuntimeClass picks this entry


def test_the_proxy_file_in_the_doc_is_valid_and_every_key_is_explained() -> None:
    _containerd, proxy = _toml_blocks()
    config = parse_config(proxy, "docs/proxy-shim.md")
    assert config.inner_shim == "containerd-shim-kata-v2"
    table = DOC.read_text(encoding="utf-8").split("| key | meaning |")[1].split("\n\n")[0]
    explained = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    keys = set(ProxyConfig._fields) - {"path"}
    assert set(proxy) == keys  # the example shows every key
    assert explained == keys  # and the table explains each
