"""shimstats.named_tuple makes what typing.NamedTuple makes, without importing typing.

The same class body goes through both (typing's as the reference); every behaviour the proxy's records are
used with is compared: construction and defaults, the tuple (unpacking, equality, hashing, order, repr),
namedtuple's API (``_fields``, ``_field_defaults``, ``_replace``, ``_asdict``, ``_make``), the body's
methods, properties, static methods and docstrings, pattern matching and pickling, and the errors.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import typing

import pytest

import shimstats.named_tuple
from shimstats.named_tuple import NamedTuple as LightNamedTuple
from shimstats.proxy.bundle import ShimArgs
from shimstats.ttrpc.address import Address

BODY = '''
class Point(Base):
    """A point, with a label."""

    x: int
    y: int = 0
    label: str = "origin"
    """A field's docstring (kept by neither)."""

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)

    def moved(self, dx: int) -> "Point":
        return self._replace(x=self.x + dx)

    @staticmethod
    def parse(text: str) -> "Point":
        x, y = text.split(",")
        return Point(int(x), int(y))

    def __str__(self) -> str:
        return f"{self.x},{self.y}"
'''


def _define(base: object, source: str = BODY, name: str = "Point") -> typing.Any:
    namespace: dict[str, object] = {"Base": base, "__name__": __name__}
    exec(compile("from __future__ import annotations\n" + source, __file__, "exec"), namespace)
    return namespace[name]


LIGHT = _define(LightNamedTuple)
TYPED = _define(typing.NamedTuple)


def test_type_checkers_see_typings_own() -> None:
    assert shimstats.named_tuple.TYPE_CHECKING is False
    assert LightNamedTuple is not typing.NamedTuple


@pytest.mark.parametrize("kind", [LIGHT, TYPED], ids=["light", "typing"])
def test_a_record_is_a_namedtuple_with_the_bodys_defaults_and_methods(kind: typing.Any) -> None:
    p = kind(3, -4)
    assert type(p).__mro__ == (kind, tuple, object)
    assert tuple(p) == (3, -4, "origin")
    x, y, label = p
    assert (x, y, label) == (3, -4, "origin")
    assert p == (3, -4, "origin")
    assert hash(p) == hash((3, -4, "origin"))
    assert kind(1) < kind(2)
    assert repr(p) == "Point(x=3, y=-4, label='origin')"
    assert str(p) == "3,-4"
    assert p.norm1 == 7
    assert p.moved(2) == kind(5, -4)
    assert kind.parse("1,2") == (1, 2, "origin")
    assert kind._fields == ("x", "y", "label")
    assert kind._field_defaults == {"y": 0, "label": "origin"}
    assert p._asdict() == {"x": 3, "y": -4, "label": "origin"}
    assert kind._make([1, 2, "a"]) == kind(1, 2, "a")
    assert p._replace(label="b").label == "b"
    assert kind.__doc__ == "A point, with a label."
    assert (kind.__name__, kind.__qualname__, kind.__module__) == ("Point", "Point", __name__)
    assert kind.__match_args__ == ("x", "y", "label")
    with pytest.raises(AttributeError):
        p.x = 1
    with pytest.raises(TypeError):
        kind()
    assert kind(y=1, x=2) == (2, 1, "origin")


def test_both_kinds_compare_equal_field_by_field() -> None:
    assert LIGHT(1, 2, "a") == TYPED(1, 2, "a")
    assert list(vars(LIGHT)) == [k for k in vars(TYPED) if k not in ("__orig_bases__",)]


def test_the_annotations_stay_as_written() -> None:
    """What typing would compile into ForwardRef objects is kept as the strings the module wrote."""
    assert LIGHT.__annotations__ == {"x": "int", "y": "int", "label": "str"}
    assert [type(t) for t in TYPED.__annotations__.values()] == [typing.ForwardRef] * 3
    assert LIGHT.__new__.__annotations__ == LIGHT.__annotations__


def test_the_proxys_records_pickle_and_copy_as_themselves() -> None:
    for record in (ShimArgs("k8s.io", "c1", bundle_flag="/b"), Address("vsock", cid=3, port=1024)):
        again = pickle.loads(pickle.dumps(record))
        assert (again, type(again)) == (record, type(record))
        assert copy.copy(record) == record
        assert copy.deepcopy(record) == record


@pytest.mark.parametrize("base", [LightNamedTuple, typing.NamedTuple], ids=["light", "typing"])
def test_the_same_mistakes_are_refused_with_the_same_words(base: object) -> None:
    with pytest.raises(TypeError, match="Non-default namedtuple field z cannot follow default field y"):
        _define(base, "class P(Base):\n    x: int\n    y: int = 0\n    z: int\n", "P")
    with pytest.raises(TypeError, match="cannot follow default fields y, z"):
        _define(base, "class P(Base):\n    y: int = 0\n    z: int = 1\n    w: int\n", "P")
    with pytest.raises(AttributeError, match="Cannot overwrite NamedTuple attribute _replace"):
        _define(base, "class P(Base):\n    x: int\n    def _replace(self): ...\n", "P")


def test_only_a_record_derives_from_it() -> None:
    with pytest.raises(TypeError, match="can only inherit from a NamedTuple type"):
        _define(LightNamedTuple, "class P(Base, int):\n    x: int\n", "P")


def test_importing_it_loads_no_typing() -> None:
    probe = "import sys, shimstats.named_tuple; print('typing' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-S", "-c", probe], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "False\n", "")
