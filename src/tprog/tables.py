"""MLP tables as defaults and exceptions: one default for the whole table, or one per value of
one of its two inputs (a table decided by one input but for a few pairs); and the values of one
input where a table has a rule of its own (`special_values`).

Shared by simplification, which gives the entries no input reaches the values that make the
table's description shortest, and by code generation, which prints that description.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

Entry = tuple[int, int, int]  # (a, b, output)
LAYOUTS = (None, 0, 1)  # one default; a default per value of input 0 (a) or of input 1 (b)


def majority(outputs: Iterable[int]) -> int:
    """The most common output; of equally common ones, the smallest."""
    counts = Counter(outputs)
    return min(counts, key=lambda out: (-counts[out], out))


def defaults(entries: list[Entry], by: int | None) -> tuple[dict[int, int], int]:
    """({value of input ``by``: its default output}, listing only those that differ from the
    table's default; the table's default). With ``by`` None, no per-value defaults."""
    if not entries:
        return {}, 0
    if by is None:
        return {}, majority(out for *_, out in entries)
    rows: dict[int, list[int]] = {}
    for entry in entries:
        rows.setdefault(entry[by], []).append(entry[2])
    row_defaults = {value: majority(outputs) for value, outputs in rows.items()}
    default = majority(row_defaults.values())
    return {value: out for value, out in row_defaults.items() if out != default}, default


def default_of(entry: Entry, by: int | None, per_value: dict[int, int], default: int) -> int:
    """The default an entry falls back to in layout ``by``."""
    return default if by is None else per_value.get(entry[by], default)


def listed(entries: list[Entry], by: int | None) -> int:
    """How many items the layout prints: the exceptions and the per-value defaults."""
    per_value, default = defaults(entries, by)
    exceptions = sum(entry[2] != default_of(entry, by, per_value, default) for entry in entries)
    return exceptions + len(per_value)


def special_values(entries: list[Entry], by: int) -> list[int]:
    """The values c of the other input such that, without the entries where it holds c, the
    table is decided by input ``by`` alone; none when it is so without leaving any out. Each
    value of ``by`` meets each value of the other input once, so leaving out c drops one entry
    of every row: a row with two outputs allows only the c where the lone one sits."""
    other = 1 - by
    rows: dict[int, list[Entry]] = {}
    for entry in entries:
        rows.setdefault(entry[by], []).append(entry)
    allowed: set[int] | None = None  # None: every c, so far
    for row in rows.values():
        counts = Counter(out for *_, out in row)
        if len(counts) == 1:
            continue
        row_allows = {entry[other] for entry in row if len(counts) == 2 and counts[entry[2]] == 1}
        allowed = row_allows if allowed is None else allowed & row_allows
        if not allowed:
            return []
    rest_of = {entry[other] for entry in entries}
    return sorted(c for c in allowed if rest_of - {c}) if allowed is not None else []
