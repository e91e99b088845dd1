"""Pure parsers, one per kernel cgroupfs file format (text in, numbers out, no I/O).

Why separate: each format is tiny but easy to get subtly wrong; keeping them pure makes every rule testable on
a three-line sample. The rules every parser shares:

- integers are plain ASCII decimal; anything else (``+5``, ``1_000``, ``0x10``, ``5.0``) is an error;
- a negative integer is an error: every file read here holds a size, a time or a count the kernel prints
  unsigned (``%llu``/``%lu``; pids.current with ``%lld`` of a counter that cannot go below 0), so a sign
  means a garbled file, not a count (runc and containerd/cgroups read it as 0; docs/cgroup-files.md says
  why we do not);
- a value above 2**64-1 is an error;
- the literal ``max`` (single-value limit files only) reads as ``U64_MAX`` ("no limit");
- every error names the file (``source``) and the 1-based line: ``memory.stat:3: ...``;
- the multi-line parsers take an optional ``skipped`` list: given one, a malformed line is appended to it as
  a CgroupFormatError and left out, so one bad line costs its own figure only (the reader's rule); without
  one, the first bad line raises.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import AnyStr, NamedTuple

U64_MAX = 2**64 - 1
"""What an unlimited ("max") limit reads as; also the kernel's largest counter value."""

POSSESSIVE = sys.version_info >= (3, 11)
"""Whether ``re`` takes possessive quantifiers (``++``, ``*+``, ``{m,n}+``): Python 3.11 added them, and the
agent runs on the guest's python3, 3.9 or later (Debian 11 ships 3.9, Ubuntu 22.04 3.10)."""
_POSSESSIVE_MARKS = ("++", "*+", "?+", "}+")


def greedy(pattern: AnyStr) -> AnyStr:
    """``pattern`` with each possessive quantifier written as the greedy one (``x++`` as ``x+``). For the
    fast paths' patterns below this is the same language: no part of them can match what follows it, so a
    possessive quantifier never has anything to give back (tests/unit/test_fuzz_parsers.py compares the two
    forms); it only spares the engine its backtracking state."""
    for mark in _POSSESSIVE_MARKS:
        if isinstance(pattern, str):
            pattern = pattern.replace(mark, mark[0])
        else:
            pattern = pattern.replace(mark.encode(), mark[:1].encode())
    return pattern


def compile_fast_path(pattern: AnyStr) -> re.Pattern[AnyStr]:
    """``re.compile`` of a fast path's possessive pattern, made greedy where ``re`` lacks possessive
    quantifiers (``greedy``), so the agent imports and answers the same on Python 3.9 and 3.10."""
    return re.compile(pattern if POSSESSIVE else greedy(pattern))


class CgroupFormatError(ValueError):
    """A kernel file did not have the format its parser expects; says which file and line."""

    def __init__(self, source: str, line: int, reason: str, key: str = "") -> None:
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason
        self.key = key
        """The key of a malformed ``key value`` line, when there is one."""


_FLAT_KEYED = compile_fast_path(r"(?:[a-z0-9_.]++ [0-9]{1,19}+\n)*+")
"""A ``key value`` file in which every line is well-formed, with keys as the kernel names them (lowercase,
digits, ``_`` and ``.``, as in v2's ``core_sched.force_idle_usec``; values of at most 19 digits fit in 64
bits): the fast path of parse_flat_keyed. Any other key goes through the line loop, which takes any key
without a space. The key class compiles to one bitmap test a character, and the regex is possessive
(``++``, ``*+``: no part can match what follows it, so giving back never helps and the engine keeps no
backtracking state): memory.stat's 42 lines cost 30k instructions, where ``[^ \n]+`` and backtracking
cost 56k."""


def decode(data: bytes, source: str) -> str:
    """Kernel stat files are ASCII; anything else is a garbled file, reported with its path."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as e:
        raise CgroupFormatError(source, 0, f"not ASCII text (byte {e.start})") from None


def _lines(text: str) -> list[str]:
    """Split on newlines; the kernel ends every line with one, so only the last may be empty."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _u64(token: str, source: str, line: int) -> int:
    """One integer token under the shared rules (negative or above 2**64-1 → error)."""
    if token.isascii() and token.isdigit():
        value = int(token)
        if value > U64_MAX:
            raise CgroupFormatError(source, line, f"value {token} does not fit in 64 bits")
        return value
    if token[:1] == "-" and token[1:].isascii() and token[1:].isdigit():
        raise CgroupFormatError(
            source, line, f"negative value {token} where the kernel writes unsigned numbers"
        )
    raise CgroupFormatError(source, line, f"expected an integer, got {token!r}")


def _bad_line(skipped: list[CgroupFormatError] | None, error: CgroupFormatError) -> None:
    """Raise ``error``, or keep it in ``skipped`` (the caller's list) and let the parser go on."""
    if skipped is None:
        raise error
    skipped.append(error)


def parse_flat_keyed(
    text: str, source: str, skipped: list[CgroupFormatError] | None = None
) -> dict[str, int]:
    """``key value`` per line (memory.stat, cpu.stat, memory.events, cpuacct.stat, memory.oom_control, ...).

    Every line must have exactly one space; a repeated key is an error (the kernel never repeats one), and
    when skipping, the key is dropped altogether since neither value can be trusted.
    """
    if _FLAT_KEYED.fullmatch(text):  # every line well-formed: split and convert in C
        tokens = text.replace("\n", " ").split(" ")
        tokens.pop()  # after the last newline
        values = iter(tokens)
        out = dict(zip(values, map(int, values)))
        if len(out) * 2 == len(tokens):  # no repeated key
            return out
    return flat_keyed_lines(text, source, skipped)


class KeyedSpelling(NamedTuple):
    """The keys of a ``key value`` file in the order a kernel writes them, and the regex of that spelling:
    each line its key and a value of at most 19 digits (that fit in 64 bits)."""

    keys: tuple[str, ...]
    pattern: re.Pattern[bytes]

    def parse(self, data: bytes) -> dict[str, int] | None:
        """parse_flat_keyed of ``data`` when it is this spelling, by one regex and the conversions in C, the
        dict keyed by the kept names (a kept string carries its hash); None otherwise."""
        found = self.pattern.fullmatch(data)
        return None if found is None else dict(zip(self.keys, map(int, found.groups())))


_SPELLINGS: dict[tuple[str, ...], KeyedSpelling] = {}
MAX_KEYED_SPELLINGS = 32
"""Spellings kept (shared by every cgroup that has one); beyond that the cache starts over."""


def keyed_spelling(keys: tuple[str, ...]) -> KeyedSpelling:
    """The spelling of a file whose keys are ``keys`` (distinct, without a space or a newline, as
    parse_flat_keyed gives them), compiled once for every cgroup that has it."""
    spelling = _SPELLINGS.get(keys)
    if spelling is None:
        if len(_SPELLINGS) >= MAX_KEYED_SPELLINGS:
            _SPELLINGS.clear()
        line = rb" ([0-9]{1,19}+)\n"
        pattern = compile_fast_path(b"".join(re.escape(key.encode("ascii")) + line for key in keys))
        spelling = _SPELLINGS[keys] = KeyedSpelling(keys, pattern)
    return spelling


def flat_keyed_lines(
    text: str, source: str, skipped: list[CgroupFormatError] | None = None
) -> dict[str, int]:
    """parse_flat_keyed line by line: any file, and the reference its fast path is tested against."""
    out = {}
    lines = _lines(text)
    bad = 0
    for number, line in enumerate(lines, 1):
        key, _, token = line.partition(" ")
        # Fast path for the common line; everything unusual (negative, garbled, huge) goes through _u64.
        if key and token.isdigit() and token.isascii() and len(token) < 20:
            out[key] = int(token)
            continue
        try:
            if not key or not token or " " in token:
                raise CgroupFormatError(source, number, f"expected 'key value', got {line!r}", key)
            out[key] = _u64(token, source, number)
        except CgroupFormatError as e:
            bad += 1
            e.key = key
            _bad_line(skipped, e)
    if len(out) + bad != len(lines):
        seen: set[str] = set()
        for number, line in enumerate(lines, 1):
            key = line.partition(" ")[0]
            if key in seen and key in out:
                del out[key]
                _bad_line(skipped, CgroupFormatError(source, number, f"key {key!r} repeated", key))
            seen.add(key)
    return out


def parse_single(text: str, source: str) -> int:
    """A one-value file (memory.current, memory.max, pids.max, cpuacct.usage, ...); ``max`` → U64_MAX."""
    if 1 < len(text) <= 20 and text[-1] == "\n" and text.isascii() and text[:-1].isdigit():
        return int(text)  # the common case: at most 19 digits always fit in 64 bits
    lines = _lines(text)
    if len(lines) != 1:
        raise CgroupFormatError(source, min(len(lines), 2), f"expected one line, got {len(lines)}")
    token = lines[0]
    if token == "max":
        return U64_MAX
    return _u64(token, source, 1)


def parse_single_bytes(data: bytes, source: str) -> int:
    """parse_single of a file's bytes, as read: the common ``digits\\n`` is converted without decoding (the
    reader's hot path, some 15 such files a Stats; bytes.isdigit accepts ASCII digits only, and int takes
    bytes); anything else is decoded and goes through parse_single's rules."""
    if 1 < len(data) <= 20 and data[-1] == 10 and data[:-1].isdigit():
        return int(data)
    return parse_single(decode(data, source), source)


_PLAIN_SINGLES = compile_fast_path(rb"(?:[0-9]{1,19}+|max)\n(?: (?:[0-9]{1,19}+|max)\n)*+")
"""One-value files joined by spaces, each a plain value (digits that fit in 64 bits, or ``max``) and its
newline."""
_U64_MAX_BYTES = str(U64_MAX).encode()


def parse_plain_singles(data: Sequence[bytes]) -> list[int] | None:
    """parse_single_bytes of several files at once when every one holds a plain value (digits or ``max``):
    one regex over the joined bytes, one split and the conversions, in C; None when any file is unusual,
    and the caller parses each with parse_single_bytes, which names the file at fault."""
    joined = b" ".join(data)
    if _PLAIN_SINGLES.fullmatch(joined) is None:
        return None
    return list(map(int, joined.replace(b"max", _U64_MAX_BYTES).split()))


def parse_int_list(text: str, source: str) -> list[int]:
    """Space-separated integers on one line (cpuacct.usage_percpu, which ends with a trailing space)."""
    lines = _lines(text)
    if len(lines) != 1:
        raise CgroupFormatError(source, min(len(lines), 2), f"expected one line, got {len(lines)}")
    return [_u64(token, source, 1) for token in lines[0].split()]


_PLAIN_INT_LIST = compile_fast_path(rb"(?:[0-9]{1,19}+ )++\n")
"""cpuacct.usage_percpu as the kernel writes it: a value and a space per CPU, then the newline."""


def parse_int_list_bytes(data: bytes, source: str) -> list[int]:
    """parse_int_list of a file's bytes, as read: the kernel's own spelling is split and converted in C (a
    Python call per value would cost some 1.5k instructions a CPU); anything else goes through
    parse_int_list's rules."""
    if _PLAIN_INT_LIST.fullmatch(data):
        return list(map(int, data.split()))
    return parse_int_list(decode(data, source), source)


_PLAIN_CPU_V1 = compile_fast_path(
    rb"([0-9]{1,19}+)\n\0user ([0-9]{1,19}+)\nsystem ([0-9]{1,19}+)\n\0((?:[0-9]{1,19}+ )++)\n"
    rb"\0nr_periods ([0-9]{1,19}+)\nnr_throttled ([0-9]{1,19}+)\nthrottled_time ([0-9]{1,19}+)\n"
    rb"(?:nr_bursts [0-9]{1,19}+\nburst_time [0-9]{1,19}+\n)?"
)
"""cgroup v1's cpuacct.usage, cpuacct.stat, cpuacct.usage_percpu and cpu.stat (with or without the burst lines
of kernel 5.14+) as the kernel writes them, joined by NULs. No part of it matches a NUL, so a match holds
each file in its own part."""


class PlainCpuV1(NamedTuple):
    """What parse_plain_cpu_v1 reads: cpuacct.usage, cpuacct.stat (ticks), cpuacct.usage_percpu, cpu.stat."""

    usage: int
    user_ticks: int
    system_ticks: int
    percpu: tuple[int, ...]
    periods: int
    throttled_periods: int
    throttled_time: int


def parse_plain_cpu_v1(data: Sequence[bytes]) -> PlainCpuV1 | None:
    """The four v1 cpu files (cpuacct.usage, cpuacct.stat, cpuacct.usage_percpu, cpu.stat, in that order) when
    each is as the kernel writes it: one regex and the conversions in C, where the files one by one cost four
    parser calls and a dict per keyed file (some 60k instructions a Stats); None when any file is otherwise,
    and the caller parses each under its own rules (parse_single, parse_flat_keyed, parse_int_list)."""
    found = _PLAIN_CPU_V1.fullmatch(b"\0".join(data))
    if found is None:
        return None
    usage, user, system, percpu, periods, throttled, throttled_time = found.groups()
    return PlainCpuV1(
        int(usage),
        int(user),
        int(system),
        tuple(map(int, percpu.split())),
        int(periods),
        int(throttled),
        int(throttled_time),
    )


_PLAIN_V2_MEMORY = (
    rb"([0-9]{1,19}+)\n\0([0-9]{1,19}+)\n\0([0-9]{1,19}+|max)\n"
    rb"\0low ([0-9]{1,19}+)\nhigh ([0-9]{1,19}+)\nmax ([0-9]{1,19}+)\noom ([0-9]{1,19}+)\n"
    rb"oom_kill ([0-9]{1,19}+)\n(?:oom_group_kill ([0-9]{1,19}+)\n)?"
)
_PLAIN_V2_SWAP_CURRENT = rb"\0([0-9]{1,19}+)\n"
_PLAIN_V2_SWAP_REST = (
    rb"\0([0-9]{1,19}+)\n\0([0-9]{1,19}+|max)\n"
    rb"\0(?:high [0-9]{1,19}+\n)?max [0-9]{1,19}+\nfail ([0-9]{1,19}+)\n"
)
_PLAIN_V2_CPU = (
    rb"\0usage_usec ([0-9]{1,19}+)\nuser_usec ([0-9]{1,19}+)\nsystem_usec ([0-9]{1,19}+)\n"
    rb"(?:core_sched\.force_idle_usec [0-9]{1,19}+\n)?"
    rb"(?:nr_periods ([0-9]{1,19}+)\nnr_throttled ([0-9]{1,19}+)\nthrottled_usec ([0-9]{1,19}+)\n"
    rb"(?:nr_bursts [0-9]{1,19}+\nburst_usec [0-9]{1,19}+\n)?)?"
)
_PLAIN_V2 = compile_fast_path(_PLAIN_V2_MEMORY + _PLAIN_V2_SWAP_CURRENT + _PLAIN_V2_CPU + _PLAIN_V2_SWAP_REST)
_PLAIN_V2_NO_SWAP = compile_fast_path(_PLAIN_V2_MEMORY + _PLAIN_V2_CPU)
"""cgroup v2's memory.current, memory.peak, memory.max, memory.events, [memory.swap.current,] cpu.stat,
[memory.swap.peak, memory.swap.max, memory.swap.events] as the kernel writes them, joined by NULs (in the
order the reader finds them: without swap accounting it stops at memory.swap.current): the lines later
kernels add to memory.events (``oom_group_kill``, 5.17+) and cpu.stat (``core_sched.force_idle_usec``, the
burst lines) optional, cpu.stat with or without the cpu controller's lines; any other spelling goes file by
file. No part of it matches a NUL, so a match holds each file in its own part."""


class PlainV2(NamedTuple):
    """What parse_plain_v2 reads; cpu times in µs, as cpu.stat has them."""

    usage: int
    peak: int
    limit: int
    events: dict[str, int]
    swap: tuple[int, int, int, int] | None
    """memory.swap.current, .peak, the ``fail`` count of memory.swap.events and memory.swap.max (a page
    counter's order); None without ``swap``."""
    cpu_usage: int
    cpu_user: int
    cpu_system: int
    throttling: tuple[int, int, int] | None
    """nr_periods, nr_throttled, throttled_usec: None when cpu.stat has no cpu controller lines."""


_MEMORY_EVENTS = ("low", "high", "max", "oom", "oom_kill", "oom_group_kill")


def _limit(value: bytes) -> int:
    return U64_MAX if value == b"max" else int(value)


def parse_plain_v2(data: Sequence[bytes], swap: bool) -> PlainV2 | None:
    """The v2 memory and cpu files (memory.current, memory.peak, memory.max, memory.events, with ``swap``
    memory.swap.current, then cpu.stat, with ``swap`` memory.swap.peak, .max and .events) when each is as the
    kernel writes it: one regex and the conversions in C, where the files one by one cost a read and a parser
    call each and a dict per keyed file (some 130k instructions a Stats); None when any file is otherwise, and
    the caller parses each under its own rules (parse_single, parse_flat_keyed)."""
    found = (_PLAIN_V2 if swap else _PLAIN_V2_NO_SWAP).fullmatch(b"\0".join(data))
    if found is None:
        return None
    groups = found.groups()
    # memory.events by its kernel names, kept (a kept string carries its hash); zip stops at the last line.
    events = dict(zip(_MEMORY_EVENTS if groups[8] is not None else _MEMORY_EVENTS[:5], map(int, groups[3:9])))
    cpu = groups[10:16] if swap else groups[9:15]
    periods = cpu[3]
    return PlainV2(
        int(groups[0]),
        int(groups[1]),
        _limit(groups[2]),
        events,
        (int(groups[9]), int(groups[16]), int(groups[18]), _limit(groups[17])) if swap else None,
        int(cpu[0]),
        int(cpu[1]),
        int(cpu[2]),
        None if periods is None else (int(periods), int(cpu[4]), int(cpu[5])),
    )


def _device(token: str, source: str, line: int) -> tuple[int, int]:
    """A ``major:minor`` device number."""
    major, sep, minor = token.partition(":")
    if not sep:
        raise CgroupFormatError(source, line, f"expected 'major:minor', got {token!r}")
    return _u64(major, source, line), _u64(minor, source, line)


class BlkioLine(NamedTuple):
    """One line of a v1 blkio file: an op of one device (op is ``""`` for files without ops)."""

    major: int
    minor: int
    op: str
    value: int


def parse_blkio(text: str, source: str, skipped: list[CgroupFormatError] | None = None) -> list[BlkioLine]:
    """A v1 blkio stat file (blkio.*_recursive, blkio.throttle.*, blkio.bfq.*).

    Two shapes: ``maj:min Op value`` (per-op files; op as the kernel spells it: Read, Write, Sync, Async,
    Discard, Total) and ``maj:min value`` (io_time, sectors). The file's own trailing ``Total n`` line, a sum
    over devices, is not returned; it must be the last line if present.
    """
    out: list[BlkioLine] = []
    lines = _lines(text)
    for number, line in enumerate(lines, 1):
        try:
            parsed = _blkio_line(line, source, number, last=number == len(lines))
        except CgroupFormatError as e:
            _bad_line(skipped, e)
            continue
        if parsed is not None:
            out.append(parsed)
    return out


def _blkio_line(line: str, source: str, number: int, last: bool) -> BlkioLine | None:
    """One line of a blkio file; None for the file's own ``Total`` line."""
    parts = line.split(" ")
    if len(parts) == 2 and parts[0] == "Total":
        if not last:
            raise CgroupFormatError(source, number, "the file's 'Total' line must come last")
        _u64(parts[1], source, number)
        return None
    if len(parts) == 3:
        op = parts[1]
        if not op.isalpha():
            raise CgroupFormatError(source, number, f"bad op {op!r}")
    elif len(parts) == 2:
        op = ""
    else:
        raise CgroupFormatError(source, number, f"expected 'maj:min [Op] value', got {line!r}")
    major, minor = _device(parts[0], source, number)
    return BlkioLine(major, minor, op, _u64(parts[-1], source, number))


IO_STAT_KEYS = ("rbytes", "wbytes", "rios", "wios", "dbytes", "dios")
"""The io.stat keys every kernel prints for a device; the parser reads these strictly."""


@dataclass(frozen=True)
class IoStatLine:
    """One device line of v2 io.stat: the standard counters (a key the kernel did not print is absent)."""

    major: int
    minor: int
    stats: dict[str, int]


def parse_nested_keyed(
    text: str, source: str, skipped: list[CgroupFormatError] | None = None
) -> list[IoStatLine]:
    """v2 io.stat: ``maj:min key=value key=value ...`` per device.

    Every token must be ``key=value``. The standard keys (IO_STAT_KEYS) must be integers; other keys come from
    optional policies (iocost ``cost.vrate=100.00``, iolatency ``depth=max``, debug ``use_delay``) whose
    values need not be integers, so they are skipped.
    """
    out: list[IoStatLine] = []
    for number, line in enumerate(_lines(text), 1):
        try:
            out.append(_io_stat_line(line, source, number))
        except CgroupFormatError as e:
            _bad_line(skipped, e)
    return out


def _io_stat_line(line: str, source: str, number: int) -> IoStatLine:
    tokens = line.split(" ")
    major, minor = _device(tokens[0], source, number)
    stats: dict[str, int] = {}
    for token in tokens[1:]:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise CgroupFormatError(source, number, f"expected 'key=value', got {token!r}")
        if key in IO_STAT_KEYS:
            if key in stats:
                raise CgroupFormatError(source, number, f"key {key!r} repeated")
            stats[key] = _u64(value, source, number)
    return IoStatLine(major, minor, stats)


def parse_meminfo(text: str, source: str) -> dict[str, int]:
    """/proc/meminfo: ``Key:   value [kB]``; values with the ``kB`` unit are returned in bytes."""
    out: dict[str, int] = {}
    for number, line in enumerate(_lines(text), 1):
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not key or not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[1] != "kB"):
            raise CgroupFormatError(source, number, f"expected 'Key: value [kB]', got {line!r}")
        value = _u64(parts[0], source, number)
        out[key] = value * 1024 if len(parts) == 2 else value
    return out


_HUGETLB_UNITS = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def parse_hugetlb_name(name: str) -> tuple[str, str] | None:
    """Split a hugetlb file name into (page size, file): ``hugetlb.2MB.current`` → ("2MB", "current").

    None when the name is not a per-size hugetlb file. The page size keeps the kernel's spelling (a number and
    KB/MB/GB), which is also the key kata-agent uses in its hugetlb map.
    """
    prefix, _, rest = name.partition(".")
    size, dot, file = rest.partition(".")
    if prefix != "hugetlb" or not dot or not file:
        return None
    digits, unit = size[:-2], size[-2:]
    if unit not in _HUGETLB_UNITS or not (digits.isascii() and digits.isdigit()):
        return None
    return size, file


def hugetlb_size_bytes(size: str) -> int:
    """Page size in bytes of a kernel page-size name (``2MB`` → 2097152): sizes are listed smallest first."""
    return int(size[:-2]) * _HUGETLB_UNITS[size[-2:]]
