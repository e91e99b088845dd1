"""``NamedTuple``: ``typing.NamedTuple``'s class syntax, without importing typing.

The proxy shim's ``start`` and ``delete`` run on every container start and delete, and containerd waits for
them. Their records (ShimArgs, BundleState, DaemonSettings, ProxyConfig, KataSpec, Address) were their only
run-time use of typing, whose import costs each of them about 11M instructions (docs/benchmarks.md).

Type checkers see ``typing.NamedTuple`` itself. At run time a record is what typing.NamedTuple makes: a
``collections.namedtuple`` class with the body's defaults, methods, properties and docstring; same fields,
equality, hashing, unpacking, ``_replace``, ``_asdict``, pickling. One difference: the annotations stay as
the module wrote them (strings, under ``from __future__ import annotations``), where typing turns each into
a ForwardRef by compiling it (and the process's first compile() builds every AST node type: ~9M more).
"""

from __future__ import annotations

import collections

__all__ = ["NamedTuple"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    _PROHIBITED = frozenset(
        {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults", "_make"}
        | {"_replace", "_asdict", "_source"}
    )
    """What typing.NamedTuple refuses to let a class body redefine (the namedtuple's own machinery)."""
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})
    """What the namedtuple sets itself, not copied from the class body."""

    class _RecordMeta(type):
        """Turns ``class R(NamedTuple): ...`` into a namedtuple class, as typing's NamedTupleMeta does."""

        def __new__(mcs, typename, bases, namespace):
            if namespace.get("__module__") == __name__ and not bases:
                return super().__new__(mcs, typename, bases, namespace)  # NamedTuple itself
            if bases != (NamedTuple,):
                raise TypeError("can only inherit from a NamedTuple type")
            annotations = namespace.get("__annotations__")
            if annotations is None and "__annotate__" in namespace:
                raise TypeError(f"{typename}: define records under 'from __future__ import annotations'")
            annotations = dict(annotations or {})
            defaults: list[str] = []
            for name in annotations:
                if name in namespace:
                    defaults.append(name)
                elif defaults:
                    plural = "s" if len(defaults) > 1 else ""
                    raise TypeError(
                        f"Non-default namedtuple field {name} cannot follow default field{plural} "
                        + ", ".join(defaults)
                    )
            record = collections.namedtuple(
                typename,
                list(annotations),
                defaults=[namespace[name] for name in defaults],
                module=namespace["__module__"],
            )
            record.__annotations__ = record.__new__.__annotations__ = annotations
            for key, value in namespace.items():
                if key in _PROHIBITED:
                    raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
                if key not in _SPECIAL and key not in record._fields:
                    setattr(record, key, value)
            return record

    class NamedTuple(metaclass=_RecordMeta):
        """Base of a record: ``class R(NamedTuple): field: type = default``; see the module's docstring."""
