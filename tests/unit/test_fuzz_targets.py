"""The atheris targets (fuzz/targets.py) on their seeds and on bounded mutations of them.

The long coverage-guided runs happen by hand (fuzz/README.md); this keeps the harnesses working between
those runs and replays their contracts in CI: every seed, and 200 deterministic mutations per target (bytes
flipped, inserted, cut), must pass its target without an exception.
"""

from __future__ import annotations

import random

import pytest

from fuzz import targets
from fuzz.targets import TARGETS, seeds

MUTATIONS = 200


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        action = rng.randrange(3)
        position = rng.randrange(len(buf) + 1)
        if action == 0 and buf:
            buf[min(position, len(buf) - 1)] = rng.randrange(256)
        elif action == 1:
            buf[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        else:
            del buf[position : position + rng.randint(1, 16)]
    return bytes(buf)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_passes_its_seeds_and_their_mutations(name: str) -> None:
    target = TARGETS[name]
    corpus = list(seeds(name))
    assert len(corpus) >= 3, f"{name}: too few seeds to start a fuzz run from"
    for seed in corpus:
        target(seed)
    rng = random.Random(name)
    for _ in range(MUTATIONS):
        target(_mutate(rng, rng.choice(corpus)))


def test_the_targets_catch_what_they_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    # A target that never raises proves nothing: a parser breaking the contract must be caught.
    monkeypatch.setattr(targets, "_PARSERS", (lambda text, source: int(text),))
    with pytest.raises(ValueError, match="invalid literal"):
        targets.parsers(b"\0not a number")
