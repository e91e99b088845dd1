"""``python -m fuzz.run TARGET [libFuzzer flags...]``: fuzz one target with atheris, coverage-guided.

The corpus lives in ``/tmp/shimstats-fuzz/TARGET`` (``SHIMSTATS_FUZZ_CORPUS`` overrides the parent) and is
seeded from fuzz.seeds the first time. Crashes are written by libFuzzer to the working directory as
``crash-<sha1>``; replay one with ``python -m fuzz.run TARGET crash-<sha1>``. See fuzz/README.md.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # no stubs; not in CI


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    name, flags = argv[1], argv[2:]
    with atheris.instrument_imports(include=["shimstats", "guest_agent"]):
        from fuzz import targets
    if name not in targets.TARGETS:
        print(f"unknown target {name!r}; targets: {', '.join(targets.TARGETS)}", file=sys.stderr)
        return 2
    replay = [f for f in flags if not f.startswith("-")]
    corpus = [] if replay else [str(_seeded_corpus(name))]
    atheris.Setup([argv[0], *flags, *corpus], targets.TARGETS[name])
    atheris.Fuzz()
    return 0


def _seeded_corpus(name: str) -> Path:
    """The target's corpus directory, seeded on first use."""
    parent = Path(os.environ.get("SHIMSTATS_FUZZ_CORPUS", "/tmp/shimstats-fuzz"))
    corpus = parent / name
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        from fuzz.targets import seeds

        for seed in seeds(name):
            (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return corpus


if __name__ == "__main__":
    sys.exit(main(sys.argv))
