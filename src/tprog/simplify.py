"""Semantics-preserving IR -> IR passes: the program a person reads, not the one extracted.

A pass may change what a program does only where no input of its *basis* can tell: the basis is
the task's whole input domain when it can be enumerated, else every train/val/test input, and
the program records which (``meta["simplified_on"]``). Every pass is checked on its basis:
predictions at every real position are unchanged (`tests/test_simplify.py`), and ``tprog verify``
re-checks the simplified program against the unsimplified one.

Beyond a whole domain, `tprog.reachable` bounds what any input can reach: a variable is folded
only if no input can make it vary, and `simplify` records how many of the rewritten table
entries and predicate rows some input beyond the basis may reach (``meta["rewrites_beyond_basis"]``,
an upper bound; where it is 0, only a removed module or term can make the programs differ).

Passes, in order:
  * `fold_constants`: a head or MLP whose variable holds one value on the whole basis (and, beyond
    a whole domain, can hold no other) adds the same weight row at every position; that row
    moves into the ``ones`` term (a per-label bias);
  * `fold_determined` (`tprog.simplify_determined`): on a whole domain, a head or MLP whose
    variable is a function of an earlier categorical variable is read through that variable,
    where its readers allow (a position relabelled by an MLP of two positions becomes a
    predicate or table over the position);
  * `remove_dead_modules`: classifier terms that never change a prediction go; then so does
    every module whose variable has no term left and which no live module reads;
  * `restrict_to_reachable`: each variable's values on the basis are recorded
    (``Variable.values``); MLP table entries of input pairs that never occur take the default
    (`tprog.tables`) of the reached ones, so tables print as defaults and a few exceptions.
    (Tables keep their shape: the interpreter evaluates padding positions too, whose inputs
    may lie anywhere in the derived bounds.)
  * `readable_predicates`: a predicate that selects the same keys on the basis as
    "matches nothing", ``k == q``, ``k == c`` or ``k == q + c`` becomes exactly that for every
    query value, so the generated code prints one exact line; otherwise the rows that never
    select a key on the basis become "matches nothing" (`ir.NEVER`). A head comparing keys
    through a ``key_map`` (`fold_determined`) loses it where no query value selects more than
    one key value on the basis, and is then a plain predicate like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from tprog import tables
from tprog.interpret import allowed_keys
from tprog.ir import (
    NEVER,
    CatAttention,
    Module,
    NumAttention,
    NumMLP,
    Program,
    Variable,
    is_read,
    matched_keys,
)
from tprog.reachable import Reach
from tprog.simplify_basis import (
    CHUNK,
    Basis,
    classifier_rows,
    environment,
    moved_term,
    predictions,
    real_positions,
    term_row,
    value_range,
    without_term,
)
from tprog.simplify_determined import fold_determined


def simplify(program: Program, basis: Basis) -> Program:
    """All passes in order; the result records its basis in ``meta``, and, when the basis is
    not the whole domain, how many of its rewrites inputs beyond the basis may reach."""
    original = program
    evaluated = replace(basis, env=environment(program, basis))
    for simplification in PASSES:
        program = simplification(program, evaluated)
    meta = {
        **program.meta,
        "simplified_on": basis.description,
        "simplified_on_whole_domain": basis.whole_domain,
    }
    if not basis.whole_domain:
        meta["rewrites_beyond_basis"] = rewrites_beyond_basis(
            original, program, basis.reach(original)
        )
    return replace(program, meta=meta)


def rewrites_beyond_basis(original: Program, simplified: Program, found: Reach) -> dict[str, int]:
    """The table entries and predicate rows that simplification changed, and that some input
    may reach (`tprog.reachable`): only there can the two programs differ. (A removed module
    or classifier term is decided on the basis alone and not counted here.)

    ``found`` must be what inputs reach in ``original``: up to a module where the two programs
    first differ on an input, that module's inputs are the original's, which the simplified
    program's own reach need not include (its upstream tables were rewritten too)."""
    before = {module.name: module for module in original.modules}
    entries = rows = 0
    for module in simplified.modules:
        if isinstance(module, CatAttention | NumAttention):
            meets, was = found.meets[module.name], before[module.name]
            for q in range(len(module.predicate)):
                old, new = (set(matched_keys(head, q, len(meets))) for head in (was, module))
                rows += old != new and any(meets[q, k] for k in old | new)
        else:
            changed = np.array(before[module.name].table) != np.array(module.table)
            entries += int((changed & found.pairs[module.name]).sum())
    return {"table_entries": entries, "predicate_rows": rows}


def fold_constants(program: Program, basis: Basis) -> Program:
    """Move the classifier row of every module variable that is constant on the basis into
    the ``ones`` term, where the predictions on the basis stay the same (they may not: float
    addition is not associative). The module then has no term of its own, so
    `remove_dead_modules` drops it unless a live module reads it."""
    if "ones" not in {var.name for var in program.variables}:
        return program  # no bias term to fold into
    env = environment(program, basis)
    real = real_positions(basis)
    rows = classifier_rows(program, env, real)
    reference = predictions(program, rows)
    possible = None if basis.whole_domain else basis.reach(program).values
    for module in program.modules:
        if module.name not in program.classifier.terms:
            continue
        values = np.unique(env[module.name][real])
        if len(values) != 1 or (possible is not None and len(possible[module.name]) != 1):
            continue  # not constant on the basis, or some input beyond it may tell
        candidate = _folded(program, module.name, int(values[0]))
        if np.array_equal(predictions(candidate, rows), reference):
            program = candidate
    return program


def remove_dead_modules(program: Program, basis: Basis) -> Program:
    """Drop, latest first, every classifier term that no prediction on the basis needs, then
    every module whose variable has no term left and no live module reads.

    Latest first, because a module can only become unread once the later ones reading it are
    gone. Input variables keep existing (``run`` computes them) but may lose their term.
    """
    rows = classifier_rows(program, environment(program, basis), real_positions(basis))
    reference = predictions(program, rows)
    produced = {module.name for module in program.modules}
    for name in reversed([var.name for var in program.variables]):
        if name in program.classifier.terms:
            candidate = without_term(program, name)
            if np.array_equal(predictions(candidate, rows), reference):
                program = candidate
        unused = name not in program.classifier.terms and not is_read(program, name)
        if name in produced and unused:
            program = _without_module(program, name)
    return program


def restrict_to_reachable(program: Program, basis: Basis) -> Program:
    """Record every variable's values on the basis and canonicalise what they never reach."""
    env = environment(program, basis)
    real = real_positions(basis)
    seen = {var.name: np.unique(env[var.name][real]) for var in program.variables}
    modules = tuple(_restrict(module, env, real) for module in program.modules)
    variables = tuple(
        replace(var, values=tuple(int(v) for v in seen[var.name])) for var in program.variables
    )
    return replace(program, modules=modules, variables=variables)


def readable_predicates(program: Program, basis: Basis) -> Program:
    """Each predicate in the simplest form among `_predicate_forms` that selects the same keys
    on the basis; failing all, rows that never select a key on the basis become NEVER."""
    variables = {var.name: var for var in program.variables}
    heads = [m for m in program.modules if isinstance(m, CatAttention | NumAttention)]
    all_meets = _meets(heads, environment(program, basis), basis, program)
    modules = []
    for module in program.modules:
        if isinstance(module, CatAttention | NumAttention):
            meets = all_meets[module.name]
            module = _without_key_map(module, meets)
            if module.key_map is None:
                forms = _predicate_forms(variables[module.query], variables[module.key], meets)
                module = _simplest_predicate(module, meets, forms)
            else:  # several key values per query: no form above prints it shorter
                module = _simplest_predicate(module, meets, forms=())
        modules.append(module)
    return replace(program, modules=tuple(modules))


PASSES: tuple[Callable[[Program, Basis], Program], ...] = (
    fold_constants,
    fold_determined,
    remove_dead_modules,
    restrict_to_reachable,
    readable_predicates,
)


# --- dead modules ------------------------------------------------------------------------


def _without_module(program: Program, name: str) -> Program:
    return replace(
        program,
        modules=tuple(m for m in program.modules if m.name != name),
        variables=tuple(v for v in program.variables if v.name != name),
    )


def _folded(program: Program, name: str, value: int) -> Program:
    """``program`` with ``name``'s weight row at ``value`` added to the ``ones`` term (which
    is 1 at every position) and ``name``'s own term gone."""
    bias = program.classifier.numerical.get("ones", (0.0,) * len(program.classifier.labels))
    row = term_row(program, name, value)
    return moved_term(program, name, "ones", tuple(b + w for b, w in zip(bias, row, strict=True)))


# --- reachable values --------------------------------------------------------------------


def _restrict(module: Module, env: dict, real: np.ndarray) -> Module:
    if isinstance(module, CatAttention | NumAttention):
        return module  # `readable_predicates` handles predicates
    a, b = (env[name][real].astype(np.int64) for name in module.inputs)
    low, span = value_range(b)
    codes = np.unique(a * span + (b - low))  # each distinct (a, b) pair once
    pairs = {(int(code // span), int(code % span) + low) for code in codes}
    lows = module.lows if isinstance(module, NumMLP) else (0, 0)
    return replace(module, table=_fill(module.table, pairs, lows))


def _fill(
    table: tuple[tuple[int, ...], ...], pairs: set[tuple[int, int]], lows: tuple[int, int]
) -> tuple[tuple[int, ...], ...]:
    """``table`` with every entry no pair in ``pairs`` reaches set to its default in the layout
    (`tables.LAYOUTS`: one default, or one per value of an input) that describes the reached
    entries with the fewest exceptions, so that the table prints as that layout."""
    used = [(a, b, table[a - lows[0]][b - lows[1]]) for a, b in sorted(pairs)]
    by = min(tables.LAYOUTS, key=lambda layout: tables.listed(used, layout))  # ties: the first
    per_value, default = tables.defaults(used, by)
    return tuple(
        tuple(
            out if (a, b) in pairs else tables.default_of((a, b, out), by, per_value, default)
            for b, out in enumerate(outputs, lows[1])
        )
        for a, outputs in enumerate(table, lows[0])
    )


# --- readable predicates -----------------------------------------------------------------


def _meets(
    heads: list[CatAttention | NumAttention], env: dict, basis: Basis, program: Program
) -> dict[str, np.ndarray]:
    """Per head, ``[d_var, d_var]`` bool: some real query holding value ``q`` may see (is
    allowed) a key holding value ``v``. A predicate row ``q -> v`` selects anything on the
    basis iff ``meets[q, v]``."""
    d_var, n = program.d_var, basis.ids.shape[1]
    cell_type = np.min_scalar_type(d_var * d_var)
    meets = {head.name: np.zeros(d_var * d_var, dtype=bool) for head in heads}
    for s in range(0, len(basis.ids), CHUNK):
        lengths = basis.lengths[s : s + CHUNK]
        real_query = np.arange(n)[None, :, None] < lengths[:, None, None]
        allowed = allowed_keys(lengths, n, program.causal) & real_query  # [b, n, n]
        for head in heads:
            query = env[head.query][s : s + CHUNK].astype(cell_type)
            key = env[head.key][s : s + CHUNK].astype(cell_type)
            cells = query[:, :, None] * cell_type.type(d_var) + key[:, None, :]  # [b, n, n]
            meets[head.name][cells[allowed]] = True  # (q, v) of each allowed pair
    return {name: seen.reshape(d_var, d_var) for name, seen in meets.items()}


def _predicate_forms(query: Variable, key: Variable, meets: np.ndarray):
    """Candidate predicates (query value -> wanted key value), simplest first: matches
    nothing, ``k == q``, ``k == c``, ``k == q + c``. ``k == q`` only between values of one
    type, arithmetic only between plain integers."""
    d_var = len(meets)
    yield lambda q: NEVER
    if query.value_type == key.value_type:
        yield lambda q: q
    for c in np.flatnonzero(meets.any(0)).tolist():  # key values some query may see
        yield lambda q, c=c: c
    if query.value_type == key.value_type == "int":
        for c in sorted(range(1 - d_var, d_var), key=lambda c: (abs(c), c)):
            if c:
                yield lambda q, c=c: q + c


def _without_key_map(module: CatAttention | NumAttention, meets: np.ndarray):
    """``module`` without its ``key_map`` where no query value selects more than one key value
    on the basis: each then matches that one value (or nothing), as a plain predicate does."""
    if module.key_map is None:
        return module
    d_var = len(meets)
    seen = [[k for k in matched_keys(module, q, d_var) if meets[q, k]] for q in range(d_var)]
    if any(len(keys) > 1 for keys in seen):
        return module
    predicate = tuple(keys[0] if keys else NEVER for keys in seen)
    return replace(module, key_map=None, predicate=predicate)


def _simplest_predicate(
    module: CatAttention | NumAttention, meets: np.ndarray, forms
) -> CatAttention | NumAttention:
    """The first of ``forms`` that selects the same keys as ``module`` for every query value,
    written out for every value (NEVER out of range); else ``module`` with NEVER on the rows
    that select nothing on the basis."""
    d_var = len(meets)
    reached = meets  # [query value, compared key value]: some such pair meets on the basis
    if module.key_map is not None:
        reached = np.zeros((d_var, d_var + 1), dtype=bool)  # key_map values are 0..d_var
        for key, compared in enumerate(module.key_map):
            reached[:, compared] |= meets[:, key]

    def selects(q: int, target: int) -> bool:
        return 0 <= target < d_var and bool(reached[q, target])

    def same_keys(form) -> bool:
        return all(
            (form(q) == target) if selects(q, target) else not selects(q, form(q))
            for q, target in enumerate(module.predicate)
        )

    for form in forms:
        if same_keys(form):
            written = (form(q) for q in range(len(module.predicate)))
            return replace(module, predicate=tuple(t if 0 <= t < d_var else NEVER for t in written))
    return replace(
        module,
        predicate=tuple(t if selects(q, t) else NEVER for q, t in enumerate(module.predicate)),
    )
