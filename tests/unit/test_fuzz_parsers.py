"""Every cgroup file parser under hypothesis: any text gives a value or CgroupFormatError, nothing else.

Two kinds of input: arbitrary text (whatever a broken or hostile kernel file could hold), and text built
from the files' own grammar with random mistakes, which reaches the deep branches far more often than
random characters do. Valid files generated from their grammar must parse back to exactly what was written.
The budget is bounded for CI (max_examples); fuzz/README.md says how to run the same targets for hours.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest_agent import parse
from guest_agent.parse import (
    U64_MAX,
    BlkioLine,
    CgroupFormatError,
    PlainCpuV1,
    PlainV2,
    decode,
    flat_keyed_lines,
    parse_blkio,
    parse_flat_keyed,
    parse_hugetlb_name,
    parse_int_list,
    parse_int_list_bytes,
    parse_meminfo,
    parse_nested_keyed,
    parse_plain_cpu_v1,
    parse_plain_singles,
    parse_plain_v2,
    parse_single,
    parse_single_bytes,
)
from guest_agent.reader import _HUGETLB_V2_EVENTS
from guest_agent.resources import parse_cpu_list, parse_setting, parse_value

BUDGET = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT_PARSERS: dict[str, Callable[[str, str], object]] = {
    "flat_keyed": parse_flat_keyed,
    "single": parse_single,
    "int_list": parse_int_list,
    "blkio": parse_blkio,
    "nested_keyed": parse_nested_keyed,
    "meminfo": parse_meminfo,
    "cpu_list": parse_cpu_list,
    "value": parse_value,
    "setting cpu.max": lambda text, source: parse_setting("cpu.max", 2, text, source),
    "setting cpuset.cpus": lambda text, source: parse_setting("cpuset.cpus", 2, text, source),
}

# Pieces of real cgroup files: near-valid text is where parsers go wrong.
PIECES = st.sampled_from(
    [" ", "  ", "\n", ":", "=", "-", ",", "max", "Total", "Read", "Write", "kB", "rbytes", "wios",
     "dbytes", "cost.vrate", "8:0", "253:1", "0", "1", "42", "18446744073709551615", "18446744073709551616",
     "-1", "+5", "0x10", "1_000", "5.0", "cache", "inactive_file", "MemTotal", "\t", "\x00", "é", "٣"]
)  # fmt: skip
NEAR_VALID = st.lists(PIECES, max_size=40).map("".join)
ANY_TEXT = st.text(max_size=300)


def _only_format_errors(parser: Callable[[str, str], object], text: str) -> None:
    error: CgroupFormatError | None = None
    try:
        parser(text, "fuzzed.file")
    except CgroupFormatError as exc:
        error = exc
    assert error is None or str(error).startswith("fuzzed.file"), "every error names the file"


@pytest.mark.parametrize("name", sorted(TEXT_PARSERS))
@BUDGET
@given(text=st.one_of(ANY_TEXT, NEAR_VALID))
def test_any_text_is_a_value_or_a_format_error_naming_the_file(name: str, text: str) -> None:
    _only_format_errors(TEXT_PARSERS[name], text)


@BUDGET
@given(data=st.binary(max_size=300))
def test_any_bytes_decode_to_ascii_text_or_a_format_error(data: bytes) -> None:
    try:
        text = decode(data, "fuzzed.file")
    except CgroupFormatError:
        assert not data.isascii()
    else:
        assert text.encode("ascii") == data


def _outcome(parse: Callable[[], int]) -> int | str:
    try:
        return parse()
    except CgroupFormatError as exc:
        return str(exc)


@BUDGET
@given(text=st.one_of(ANY_TEXT, NEAR_VALID, st.binary(max_size=24).map(lambda b: b.decode("latin-1"))))
def test_single_value_bytes_read_as_their_decoded_text_does(text: str) -> None:
    """The reader's bytes fast path (parse_single_bytes) gives parse_single's value or error, always."""
    data = text.encode("utf-8")
    expected = _outcome(lambda: parse_single(decode(data, "fuzzed.file"), "fuzzed.file"))
    assert _outcome(lambda: parse_single_bytes(data, "fuzzed.file")) == expected


@BUDGET
@given(name=st.one_of(st.text(max_size=40), NEAR_VALID.map(lambda s: "hugetlb." + s.replace(" ", ""))))
def test_hugetlb_names_split_or_are_none(name: str) -> None:
    parsed = parse_hugetlb_name(name)
    if parsed is not None:
        size, file = parsed
        assert name == f"hugetlb.{size}.{file}"


# -- valid files round trip ----------------------------------------------------------------------------------

KEYS = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=1, max_size=24)
U64 = st.integers(0, U64_MAX)


@BUDGET
@given(stats=st.dictionaries(KEYS, U64, max_size=60), final_newline=st.booleans())
def test_flat_keyed_files_round_trip(stats: dict[str, int], final_newline: bool) -> None:
    text = "".join(f"{key} {value}\n" for key, value in stats.items())
    if not final_newline:
        text = text.rstrip("\n")
    assert parse_flat_keyed(text, "memory.stat") == stats


@BUDGET
@given(value=st.one_of(U64, st.just("max")))
def test_single_value_files_round_trip(value: int | str) -> None:
    assert parse_single(f"{value}\n", "memory.max") == (U64_MAX if value == "max" else value)


@BUDGET
@given(values=st.lists(U64, max_size=64))
def test_percpu_lists_round_trip_with_the_kernels_trailing_space(values: list[int]) -> None:
    assert parse_int_list("".join(f"{v} " for v in values) + "\n", "cpuacct.usage_percpu") == values


DEVICE = st.tuples(st.integers(0, 4095), st.integers(0, 1 << 20))
OPS = st.sampled_from(["Read", "Write", "Sync", "Async", "Discard", "Total"])


@BUDGET
@given(lines=st.lists(st.tuples(DEVICE, OPS, U64), max_size=30), total=st.one_of(st.none(), U64))
def test_blkio_files_round_trip_and_drop_the_file_total(
    lines: list[tuple[tuple[int, int], str, int]], total: int | None
) -> None:
    text = "".join(f"{major}:{minor} {op} {value}\n" for (major, minor), op, value in lines)
    if total is not None:
        text += f"Total {total}\n"
    expected = [BlkioLine(major, minor, op, value) for (major, minor), op, value in lines]
    assert parse_blkio(text, "blkio.throttle.io_service_bytes") == expected


@BUDGET
@given(
    devices=st.lists(
        st.tuples(DEVICE, st.dictionaries(st.sampled_from(["rbytes", "wbytes", "rios", "wios"]), U64)),
        max_size=10,
    )
)
def test_io_stat_round_trips(devices: list[tuple[tuple[int, int], dict[str, int]]]) -> None:
    text = "".join(
        f"{major}:{minor}" + "".join(f" {k}={v}" for k, v in stats.items()) + "\n"
        for (major, minor), stats in devices
    )
    parsed = parse_nested_keyed(text, "io.stat")
    assert [((p.major, p.minor), p.stats) for p in parsed] == devices


@BUDGET
@given(cpus=st.sets(st.integers(0, 511), max_size=40))
def test_cpu_lists_round_trip(cpus: set[int]) -> None:
    assert parse_cpu_list(",".join(str(c) for c in sorted(cpus)), "cpuset.cpus") == sorted(cpus)


PLAIN_SINGLE = st.one_of(st.just("max\n"), st.integers(0, 10**19 - 1).map(lambda n: f"{n}\n"))
"""A one-value file as the kernel writes it (digits that fit in 19 places, or max)."""


@BUDGET
@given(
    files=st.lists(
        st.one_of(
            PLAIN_SINGLE, PLAIN_SINGLE, NEAR_VALID, st.binary(max_size=24).map(lambda b: b.decode("latin-1"))
        ),
        min_size=1,
        max_size=5,
    )
)
def test_one_value_files_read_in_one_go_read_as_each_alone(files: list[str]) -> None:
    """parse_plain_singles gives each file's parse_single_bytes value when every one is plain (digits that
    fit in 19 places, or max, and the newline), and None otherwise (each is then read alone)."""
    data = [text.encode("utf-8") for text in files]
    alone = [_outcome(lambda d=d: parse_single_bytes(d, "f")) for d in data]  # type: ignore[misc]
    plain = all(d == b"max\n" or (1 < len(d) <= 20 and d[-1:] == b"\n" and d[:-1].isdigit()) for d in data)
    assert parse_plain_singles(data) == (alone if plain else None)


PLAIN_INT_LIST = st.lists(st.integers(0, 10**19 - 1), min_size=1, max_size=8).map(
    lambda values: "".join(f"{v} " for v in values) + "\n"
)
"""cpuacct.usage_percpu as the kernel writes it."""


@BUDGET
@given(text=st.one_of(PLAIN_INT_LIST, NEAR_VALID, st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
def test_int_list_bytes_read_as_their_decoded_text_does(text: str) -> None:
    """The reader's bytes fast path (parse_int_list_bytes) gives parse_int_list's values or error, always."""
    data = text.encode("utf-8")
    expected = _outcome(lambda: parse_int_list(decode(data, "f"), "f"))  # type: ignore[arg-type,return-value]
    assert _outcome(lambda: parse_int_list_bytes(data, "f")) == expected  # type: ignore[arg-type,return-value]


BACKTRACKING: dict[str, re.Pattern[Any]] = {
    "_FLAT_KEYED": re.compile(r"(?:[a-z0-9_.]+ [0-9]{1,19}\n)*"),
    "_PLAIN_SINGLES": re.compile(rb"(?:[0-9]{1,19}|max)\n(?: (?:[0-9]{1,19}|max)\n)*"),
    "_PLAIN_INT_LIST": re.compile(rb"(?:[0-9]{1,19} )+\n"),
}
"""The fast paths' regexes as first written (greedy, backtracking; _FLAT_KEYED's key class was ``[^ \\n]``, a
superset tested below); the module's are possessive."""


@pytest.mark.parametrize("name", sorted(BACKTRACKING))
@BUDGET
@given(
    text=st.one_of(
        NEAR_VALID,
        ANY_TEXT,
        PLAIN_INT_LIST,
        PLAIN_SINGLE,
        st.dictionaries(KEYS, U64).map(
            lambda stats: "".join(f"{key} {value}\n" for key, value in stats.items())
        ),
    )
)
def test_possessive_fast_path_regexes_accept_what_the_backtracking_ones_do(name: str, text: str) -> None:
    pattern: re.Pattern[Any] = getattr(parse, name)
    subject: str | bytes = text if isinstance(pattern.pattern, str) else text.encode("utf-8")
    expected = BACKTRACKING[name].fullmatch(subject)
    found = pattern.fullmatch(subject)
    assert (found is None) == (expected is None)
    _same_under_greedy(pattern, subject)


U19 = st.integers(0, 10**19 - 1)
CPU_V1_AS_WRITTEN = (
    U19.map(lambda n: f"{n}\n"),
    st.tuples(U19, U19).map(lambda t: f"user {t[0]}\nsystem {t[1]}\n"),
    PLAIN_INT_LIST,
    st.tuples(U19, U19, U19, st.one_of(st.none(), st.tuples(U19, U19))).map(
        lambda t: (
            f"nr_periods {t[0]}\nnr_throttled {t[1]}\nthrottled_time {t[2]}\n"
            + ("" if t[3] is None else f"nr_bursts {t[3][0]}\nburst_time {t[3][1]}\n")
        )
    ),
)
"""cpuacct.usage, cpuacct.stat, cpuacct.usage_percpu and cpu.stat as a v1 kernel writes them."""
GARBLED = st.one_of(NEAR_VALID, st.binary(max_size=40).map(lambda b: b.decode("latin-1")))


def _cpu_v1_one_by_one(data: list[bytes]) -> PlainCpuV1 | None:
    """The four files through the reader's file-by-file parsers; None if any figure would be left out."""
    skipped: list[CgroupFormatError] = []
    try:
        usage = parse_single_bytes(data[0], "f")
        ticks = parse_flat_keyed(decode(data[1], "f"), "f", skipped)
        percpu = parse_int_list_bytes(data[2], "f")
        stat = parse_flat_keyed(decode(data[3], "f"), "f", skipped)
        return PlainCpuV1(
            usage,
            ticks["user"],
            ticks["system"],
            tuple(percpu),
            stat["nr_periods"],
            stat["nr_throttled"],
            stat["throttled_time"],
        )
    except (CgroupFormatError, KeyError):
        return None


@BUDGET
@given(
    files=st.tuples(
        *(
            st.one_of(written.map(lambda t: (t, True)), GARBLED.map(lambda t: (t, False)))
            for written in CPU_V1_AS_WRITTEN
        )
    )
)
def test_v1_cpu_files_read_in_one_go_read_as_each_alone(files: tuple[tuple[str, bool], ...]) -> None:
    """parse_plain_cpu_v1 gives what the four files' own parsers give when each is as the kernel writes it,
    and None (each file then read alone) for anything it does not take, never a different value."""
    data = [text.encode("utf-8") for text, _ in files]
    plain = parse_plain_cpu_v1(data)
    if all(as_written for _, as_written in files):
        assert plain is not None
    if plain is not None:
        assert plain == _cpu_v1_one_by_one(data)
    _same_under_greedy(parse._PLAIN_CPU_V1, b"\0".join(data))


def _same_under_greedy(pattern: re.Pattern[Any], subject: str | bytes) -> None:
    """What Python 3.9 and 3.10 compile in place of ``pattern`` (parse.compile_fast_path) matches the same
    subjects with the same groups."""
    found = pattern.fullmatch(subject)
    greedy = re.compile(parse.greedy(pattern.pattern)).fullmatch(subject)
    assert (greedy is None) == (found is None)
    if found is not None and greedy is not None:
        assert greedy.groups() == found.groups()


@BUDGET
@given(
    text=st.one_of(
        NEAR_VALID,
        ANY_TEXT,
        st.dictionaries(st.one_of(KEYS, st.text(max_size=12)), st.one_of(U64, st.integers(-5, -1))).map(
            lambda stats: "".join(f"{key} {value}\n" for key, value in stats.items())
        ),
    )
)
def test_flat_keyed_fast_path_reads_as_the_line_loop(text: str) -> None:
    """parse_flat_keyed's fast path (kernel-named keys, one regex, conversion in C) gives the line loop's
    values, errors and left-out lines, whatever the text."""
    fast: list[CgroupFormatError] = []
    loop: list[CgroupFormatError] = []
    expected = _outcome(lambda: flat_keyed_lines(text, "f", loop))  # type: ignore[arg-type,return-value]
    assert _outcome(lambda: parse_flat_keyed(text, "f", fast)) == expected  # type: ignore[arg-type,return-value]
    assert [(str(e), e.key) for e in fast] == [(str(e), e.key) for e in loop]
    strict = _outcome(lambda: flat_keyed_lines(text, "f"))  # type: ignore[arg-type,return-value]
    assert _outcome(lambda: parse_flat_keyed(text, "f")) == strict  # type: ignore[arg-type,return-value]


@BUDGET
@given(
    text=st.one_of(
        U19.map(lambda n: f"max {n}\n"),
        st.dictionaries(st.sampled_from(["max", "high", "low", "fail"]), U64).map(
            lambda stats: "".join(f"{key} {value}\n" for key, value in stats.items())
        ),
        GARBLED,
    )
)
def test_v2_hugetlb_events_in_one_go_read_as_the_flat_keyed_parser(text: str) -> None:
    """The reader's one-go spelling of a v2 hugetlb.<size>.events file gives parse_flat_keyed's ``max`` with
    no line left out, or does not match (the file is then read under its own rules)."""
    data = text.encode("utf-8")
    found = _HUGETLB_V2_EVENTS.fullmatch(data)
    _same_under_greedy(_HUGETLB_V2_EVENTS, data)
    value = text[4:-1]
    if text[:4] == "max " and text[-1:] == "\n" and value.isascii() and value.isdigit() and len(value) <= 19:
        assert found is not None
    if found is not None:
        skipped: list[CgroupFormatError] = []
        assert parse_flat_keyed(decode(data, "f"), "f", skipped) == {"max": int(found[1])}
        assert skipped == []


def _optional_line(key: str, value: int | None) -> str:
    return "" if value is None else f"{key} {value}\n"


V2_VALUE = U19.map(lambda n: f"{n}\n")
V2_LIMIT = st.one_of(st.just("max\n"), V2_VALUE)
V2_MEMORY_EVENTS = st.tuples(st.lists(U19, min_size=5, max_size=5), st.none() | U19).map(
    lambda t: (
        "".join(f"{k} {v}\n" for k, v in zip(("low", "high", "max", "oom", "oom_kill"), t[0]))
        + _optional_line("oom_group_kill", t[1])
    )
)
V2_SWAP_EVENTS = st.tuples(st.none() | U19, U19, U19).map(
    lambda t: _optional_line("high", t[0]) + f"max {t[1]}\nfail {t[2]}\n"
)
V2_CPU_STAT = st.tuples(
    st.lists(U19, min_size=3, max_size=3),
    st.none() | U19,
    st.none() | st.tuples(st.lists(U19, min_size=3, max_size=3), st.none() | st.tuples(U19, U19)),
).map(
    lambda t: (
        "".join(f"{k} {v}\n" for k, v in zip(("usage_usec", "user_usec", "system_usec"), t[0]))
        + _optional_line("core_sched.force_idle_usec", t[1])
        + (
            ""
            if t[2] is None
            else "".join(
                f"{k} {v}\n" for k, v in zip(("nr_periods", "nr_throttled", "throttled_usec"), t[2][0])
            )
            + ("" if t[2][1] is None else f"nr_bursts {t[2][1][0]}\nburst_usec {t[2][1][1]}\n")
        )
    )
)
V2_AS_WRITTEN = (
    V2_VALUE,  # memory.current
    V2_VALUE,  # memory.peak
    V2_LIMIT,  # memory.max
    V2_MEMORY_EVENTS,
    V2_VALUE,  # memory.swap.current
    V2_CPU_STAT,
    V2_VALUE,  # memory.swap.peak
    V2_LIMIT,  # memory.swap.max
    V2_SWAP_EVENTS,
)
"""The files parse_plain_v2 takes with swap accounting, in its order, as a v2 kernel writes them; without
it, memory.swap.current and the three after cpu.stat are not there."""
_V2_SWAP_FILES = (4, 6, 7, 8)


def _v2_one_by_one(data: list[bytes], swap: bool) -> PlainV2 | None:
    """The files through the reader's file-by-file parsers and rules (_memory_v2, _swap_v2, _cpu_v2); None if
    any figure would be left out."""
    skipped: list[CgroupFormatError] = []
    cpu_data, swap_read = data[5 if swap else 4], None
    try:
        usage, peak, limit = (parse_single_bytes(d, "f") for d in data[:3])
        events = parse_flat_keyed(decode(data[3], "f"), "f", skipped)
        if swap:
            swap_events = parse_flat_keyed(decode(data[8], "f"), "f", skipped)
            swap_read = (
                parse_single_bytes(data[4], "f"),
                parse_single_bytes(data[6], "f"),
                swap_events.get("fail", 0),
                parse_single_bytes(data[7], "f"),
            )
        stat = parse_flat_keyed(decode(cpu_data, "f"), "f", skipped)
        throttling = None
        if "nr_periods" in stat:
            throttling = (stat["nr_periods"], stat["nr_throttled"], stat["throttled_usec"])
        read = PlainV2(
            usage,
            peak,
            limit,
            events,
            swap_read,
            stat["usage_usec"],
            stat["user_usec"],
            stat["system_usec"],
            throttling,
        )
        return None if skipped or "max" not in events else read
    except (CgroupFormatError, KeyError):
        return None


@BUDGET
@given(
    files=st.tuples(*V2_AS_WRITTEN),
    garbled=st.dictionaries(st.integers(0, len(V2_AS_WRITTEN) - 1), GARBLED, max_size=2),
    swap=st.booleans(),
)
def test_v2_memory_and_cpu_files_read_in_one_go_read_as_each_alone(
    files: tuple[str, ...], garbled: dict[int, str], swap: bool
) -> None:
    """parse_plain_v2 gives what the files' own parsers give when each is as the kernel writes it (with and
    without swap accounting, with and without the lines only some kernels write), and None (each file then
    read alone) for anything it does not take, never a different value."""
    texts = [garbled.get(i, text) for i, text in enumerate(files)]
    if not swap:
        texts = [text for i, text in enumerate(texts) if i not in _V2_SWAP_FILES]
    data = [text.encode("utf-8") for text in texts]
    plain = parse_plain_v2(data, swap)
    if not garbled:
        assert plain is not None
    if plain is not None:
        assert plain == _v2_one_by_one(data, swap)
    _same_under_greedy(parse._PLAIN_V2 if swap else parse._PLAIN_V2_NO_SWAP, b"\0".join(data))
