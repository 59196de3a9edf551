"""IR -> a readable, standard-library-only Python module that computes exactly what the IR does.

Data (tokens, labels, task name) is only ever written with ``repr``, through the docstring
sanitiser, or into the JSON weights file; identifiers come only from checked module/variable
names. Token-valued variables hold token strings, so predicates read ``'a'`` rather than ``3``.
"""

from __future__ import annotations

import builtins
import importlib.util
import itertools
import json
import keyword
import operator
import os
import re
import tempfile
import textwrap
import types
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tprog import ir, tables
from tprog.codegen_template import BOUND_NAMES, RUNTIME_FILE, RUNTIME_SOURCE
from tprog.codegen_template import TEMPLATE as _TEMPLATE
from tprog.program_stats import code_lines

_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_WIDTH = 100
_KINDS = (
    ("layer", "layer"),
    ("categorical attention head", ir.CatAttention),
    ("numerical attention head", ir.NumAttention),
    ("categorical MLP", ir.CatMLP),
    ("numerical MLP", ir.NumMLP),
)
_counter = itertools.count()

# Every name the template defines or `program` uses: program names must not shadow them.
_RESERVED = frozenset(re.findall(r"^([A-Za-z_]\w*) =", _TEMPLATE, re.M)) | {
    *BOUND_NAMES,
    "runpy",
    "Path",
    "program",
}


def _docstring(text: str) -> str:
    """A triple-quoted literal whose value is ``text``: data can neither end it nor break it."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        else:  # repr escapes every unprintable character (and lone surrogates)
            out.append(ch if ch == "\n" or ch.isprintable() else repr(ch)[1:-1])
    return '"""' + "".join(out) + '\n"""'


class _Gen:
    """Names, types and literals of one program while its source is written."""

    def __init__(self, program: ir.Program) -> None:
        self.p = program
        if len(set(program.vocab)) != len(program.vocab):
            raise ValueError("the program's vocabulary has repeated entries.")
        if program.unk is not None and program.unk not in program.vocab[1:]:
            raise ValueError(f"the program's unk token {program.unk!r} is not in its vocabulary.")
        declared = {v.name: v.value_type for v in program.variables if v.kind == "categorical"}
        self.types = {v.name: v.value_type for v in ir.INPUT_VARIABLES}
        self.real = {"tokens"}  # hold only real tokens (never <pad>): copies of the input
        names, self.functions = [v.name for v in ir.INPUT_VARIABLES], []
        for module in program.modules:
            for name in ir.reads(module):
                if name not in names:
                    raise ValueError(f"module {module.name!r} reads {name!r} before it exists.")
            if not _NAME.fullmatch(module.name) or keyword.iskeyword(module.name):
                raise ValueError(f"module name {module.name!r} is not a Python identifier.")
            names.append(module.name)
            self.functions.append(_function_name(module))
            if isinstance(module, ir.CatAttention):  # a head copies its value variable
                self.types[module.name] = self.types[module.value]
                if module.value in self.real:
                    self.real.add(module.name)
            else:
                numerical = isinstance(module, ir.NumAttention)
                self.types[module.name] = "int" if numerical else declared.get(module.name, "int")
        used = names + self.functions + [f.upper() for f in self.functions]
        clash = [x for x in used if x in _RESERVED or hasattr(builtins, x)]
        clash += [x for x, count in Counter(used).items() if count > 1]
        if clash:
            raise ValueError(f"program names {sorted(set(clash))} clash with generated code.")
        for name in program.classifier.terms:
            if name not in names:
                raise ValueError(f"the classifier reads {name!r}, which no module computes.")

    def token_valued(self, name: str) -> bool:
        return self.types.get(name) == "token"

    def domain(self, name: str, size: int) -> range:
        """The values (of ``0..size-1``) a categorical variable can hold."""
        if self.token_valued(name):  # input tokens are never <pad> (id 0)
            return range(int(name in self.real), min(size, len(self.p.vocab)))
        return range(min(size, self.p.n_ctx) if name == "positions" else size)

    def lit(self, name: str, value: int) -> str:
        if not self.token_valued(name):
            return repr(int(value))
        if not 0 <= value < len(self.p.vocab):
            raise ValueError(f"{name!r} would hold {value}, which is not a vocabulary id.")
        return repr(self.p.vocab[value])


def _function_name(module: ir.Module) -> str:
    """``attn_0_1`` calls ``predicate_0_1``, ``num_mlp_1_0`` calls ``num_table_1_0``: named
    apart from the variable, which program() assigns. Older IR files name variables
    ``attn_0_1_outputs``, and get the same function names."""
    stem = ir.current_name(module.name)
    if isinstance(module, ir.CatAttention | ir.NumAttention):
        match = re.fullmatch(r"(num_)?attn_(.+)", stem)
        return f"{match[1] or ''}predicate_{match[2]}" if match else f"predicate_{stem}"
    match = re.fullmatch(r"(num_)?mlp_(.+)", stem)
    return f"{match[1] or ''}table_{match[2]}" if match else f"table_{stem}"


def _singular(name: str) -> str:
    stem = name.removesuffix("s")
    return stem if stem and not keyword.iskeyword(stem) else name


def _wrap(opening: str, items: list[str], closing: str, indent: str = "") -> str:
    """``opening items closing`` on one line if it fits, else items filling indented lines."""
    flat = indent + opening + ", ".join(items) + closing
    if len(flat) <= _WIDTH:
        return flat
    lines = [indent + opening.rstrip()]
    for n, item in enumerate(items):  # break only between items: they may hold spaces
        if n == 0 or len(lines[-1]) + len(item) + 2 > _WIDTH:
            lines.append(f"{indent}    {item},")
        else:
            lines[-1] += f" {item},"
    return "\n".join([*lines, indent + closing.lstrip()])


def _predicate_source(gen: _Gen, module: ir.CatAttention | ir.NumAttention, fn: str) -> str:
    """The predicate as a fallback rule (``return False``, ``k == c``, ``k == q`` or
    ``k == q + c``, whichever covers the most query values) and branches for the exceptions;
    a lookup ``k == {q: c, ...}.get(q, fallback)`` when the exceptions want several keys."""
    q, k = f"q_{_singular(module.query)}", f"k_{_singular(module.key)}"
    bodies = {}  # query value -> its exact return statement
    for value in gen.domain(module.query, len(module.predicate)):
        matched = [gen.lit(module.key, key) for key in _matched(gen, module, value)]
        bodies[value] = (
            "return False"
            if not matched
            else f"return {k} == {matched[0]}"
            if len(matched) == 1
            else f"return {k} in {{{', '.join(matched)}}}"
        )
    covered = {body: [v for v in bodies if bodies[v] == body] for body in bodies.values()}
    relative = _relative_rules(gen, module, bodies, q, k)
    covered.update(relative)
    fallback = max(covered, key=lambda body: len(covered[body]), default="return False")
    exceptions = {v: body for v, body in bodies.items() if v not in covered.get(fallback, ())}
    # Matching nothing but for some queries, which all follow one rule (e.g. k == q): one branch.
    rule = next((r for r in relative if set(exceptions) <= set(relative[r])), None)
    if fallback == "return False" and rule is not None:
        exceptions = dict.fromkeys(exceptions, rule)
    exceptions = [(gen.lit(module.query, value), body) for value, body in exceptions.items()]
    groups: dict[str, list[str]] = {}  # return statement -> query literals, in order
    for query, body in exceptions:
        groups.setdefault(body, []).append(query)
    lines = [f"def {fn}({q}, {k}):", f'    """The predicate of {module.name}."""']
    lookup = _lookup(fallback, exceptions, k, q)
    # One query wanting another key than the rest: one line, like a longer lookup.
    single = len(exceptions) == 1 and all(
        body != "return False" and q not in body for body in [fallback, *groups]
    )
    if lookup is not None and (len(groups) > 1 or single):
        # Queries wanting different keys: a lookup reads faster than a chain of branches.
        return "\n".join([*lines, *lookup])
    if len(groups) == 1:
        ((body, values),) = groups.items()
        rule = _one_rule(body, values, fallback, q)
        if rule is not None:
            return "\n".join([*lines, rule])
    for n, (body, values) in enumerate(groups.items()):
        word = "elif" if n else "if"
        if len(values) == 1:
            lines.append(f"    {word} {q} == {values[0]}:")
        else:
            lines.append(_wrap(f"{word} {q} in {{", values, "}:", "    "))
        lines.append(f"        {body}")
    lines += ["    else:", f"        {fallback}"] if groups else [f"    {fallback}"]
    return "\n".join(lines)


def _matched(gen: _Gen, module: ir.CatAttention | ir.NumAttention, value: int) -> list[int]:
    """The key values a query holding ``value`` matches, of those a key can hold."""
    if module.key_map is None:  # one, unless no key ever holds it
        target = module.predicate[value]
        never = target == ir.NEVER or (
            gen.token_valued(module.key) and target not in gen.domain(module.key, target + 1)
        )
        return [] if never else [target]
    held = gen.domain(module.key, len(module.key_map))
    return [key for key in ir.matched_keys(module, value, len(module.key_map)) if key in held]


def _one_rule(body: str, values: list[str], fallback: str, q: str) -> str | None:
    """One branch and the fallback as one boolean statement, when it fits on a line:
    ``q in {...} and k == x``, ``q not in {...} and k == x``, ``k == (x if q in {...} else
    y)`` or, where a query matches several key values, ``k in ({...} if q in {...} else
    {...})``; None where the two statements are not ``return False``, ``return k == ...`` or
    ``return k in {...}``."""
    one = len(values) == 1
    inside = f"{q} == {values[0]}" if one else f"{q} in {{{', '.join(values)}}}"
    outside = f"{q} != {values[0]}" if one else f"{q} not in {{{', '.join(values)}}}"
    if body == "return False":
        statement = f"return {outside} and {fallback.removeprefix('return ')}"
    elif fallback == "return False":
        statement = f"return {inside} and {body.removeprefix('return ')}"
    else:
        (k, test, chosen), (other, other_test, otherwise) = map(_comparison, (body, fallback))
        if not chosen or not otherwise or other != k:
            return None
        if test != other_test:  # a key value and a set of them: both as sets
            chosen, otherwise = (
                x if t == "in" else f"{{{x}}}" for x, t in ((chosen, test), (otherwise, other_test))
            )
            test = "in"
        statement = f"return {k} {test} ({chosen} if {inside} else {otherwise})"
    line = f"    {statement}"
    return line if len(line) <= _WIDTH else None


def _comparison(body: str) -> tuple[str, str, str]:
    """``return k == x`` as ``(k, "==", x)``, ``return k in {...}`` as ``(k, "in", "{...}")``;
    anything else with an empty last part."""
    for test in ("==", "in"):
        k, found, compared = body.removeprefix("return ").partition(f" {test} ")
        if found:
            return k, test, compared
    return body, "", ""


def _lookup(fallback: str, exceptions: list[tuple[str, str]], k: str, q: str) -> list[str] | None:
    """The body ``return k == {query: key, ...}.get(q, fallback key)`` when every statement is
    ``return k == <expression>`` or ``return False`` (written as key None, which no key equals,
    or by leaving the query out when the fallback is False); else None."""
    bodies = [fallback, *(b for _, b in exceptions)]
    if any(body.startswith(f"return {k} in ") for body in bodies):
        return _set_lookup(bodies, exceptions, k, q)
    prefix = f"return {k} == "
    keys = {"return False": "None"}
    for body in bodies:
        if body not in keys and not body.startswith(prefix):
            return None
        keys.setdefault(body, body.removeprefix(prefix))
    entries = [f"{query}: {keys[body]}" for query, body in exceptions]
    default = "" if fallback == "return False" else f", {keys[fallback]}"
    nowhere = [
        *(["mapped to None"] if any(body == "return False" for _, body in exceptions) else []),
        *(["not listed"] if fallback == "return False" else []),
    ]
    note = [f"    # a query {' or '.join(nowhere)} matches no key"] if nowhere else []
    return [*note, _wrap(f"return {k} == {{", entries, f"}}.get({q}{default})", "    ")]


def _set_lookup(bodies: list[str], exceptions: list[tuple[str, str]], k: str, q: str) -> list[str]:
    """``return k in {query: {key, ...}, ...}.get(q, {fallback keys})``, for predicates whose
    queries may match several key values; every body is ``return False``, ``return k == x`` or
    ``return k in {...}`` (`_predicate_source`)."""

    def keys(body: str) -> str:
        if body == "return False":
            return "set()"
        if body.startswith(f"return {k} == "):
            return "{" + body.removeprefix(f"return {k} == ") + "}"
        return body.removeprefix(f"return {k} in ")

    entries = [f"{query}: {keys(body)}" for query, body in exceptions]
    return [_wrap(f"return {k} in {{", entries, f"}}.get({q}, {keys(bodies[0])})", "    ")]


def _relative_rules(
    gen: _Gen, module: ir.CatAttention | ir.NumAttention, bodies: dict, q: str, k: str
) -> dict[str, list[int]]:
    """``k == q`` (values of one type) and ``k == q + c`` (plain integers), each with the query
    values whose exact statement it equals. Keys are ``0..d_var-1``, so where ``q + c`` falls
    outside, ``k == q + c`` is ``return False`` exactly."""
    same_type = gen.token_valued(module.query) == gen.token_valued(module.key)
    if not same_type or module.key_map is not None:  # keys compared through a map: sets
        return {}
    integers = not gen.token_valued(module.key)
    shifts = range(1 - len(module.predicate), len(module.predicate)) if integers else (0,)
    rules = {}
    for c in shifts:
        expression = f"{q} + {c}" if c > 0 else f"{q} - {-c}" if c < 0 else q
        wanted = {v: v + c for v in bodies}
        rules[f"return {k} == {expression}"] = [
            v
            for v, body in bodies.items()
            if (module.predicate[v] == wanted[v] and body != "return False")
            or (body == "return False" and not 0 <= wanted[v] < len(module.predicate))
        ]
    return rules


# Exact formulas an MLP table may print as, simplest first: (source over {a} and {b}, function).
_FORMULAS = (
    ("{a}", lambda a, b: a),
    ("{b}", lambda a, b: b),
    ("min({a}, {b})", min),
    ("max({a}, {b})", max),
    ("{a} + {b}", operator.add),
    ("{a} - {b}", operator.sub),
    ("{b} - {a}", lambda a, b: b - a),
    ("int({a} == {b})", lambda a, b: int(a == b)),
    ("int({a} < {b})", lambda a, b: int(a < b)),
    ("int({a} > {b})", lambda a, b: int(a > b)),
)


def _mlp_entries(gen: _Gen, module: ir.CatMLP | ir.NumMLP) -> list[tuple[int, int, int]]:
    """(a, b, output) for every input pair the module can see; a and b are the values the
    variables hold (vocabulary ids for tokens)."""
    table, (a_name, b_name) = module.table, module.inputs
    if isinstance(module, ir.NumMLP):  # table index -> absolute value
        rows = [(r, module.lows[0] + r) for r in range(len(table))]
        cols = [(c, module.lows[1] + c) for c in range(len(table[0]) if table else 0)]
    else:
        rows = [(v, v) for v in gen.domain(a_name, len(table))]
        cols = [(v, v) for v in gen.domain(b_name, len(table[0]) if table else 0)]
    return [
        (a, b, table[r][c])
        for r, a in rows
        for c, b in cols
        if a_name != b_name or a == b  # one variable read twice: only the diagonal happens
    ]


def _formula(gen: _Gen, module: ir.CatMLP | ir.NumMLP, entries, a: str, b: str) -> str | None:
    """The first formula equal to the table on every entry, for integer inputs and output and a
    table that is not constant; else None."""
    if any(gen.token_valued(name) for name in (*module.inputs, module.name)):
        return None
    if len({out for _, _, out in entries}) < 2:
        return None
    for source, function in _FORMULAS:
        if all(function(x, y) == out for x, y, out in entries):
            return source.format(a=a, b=b)
    return None


def _mlp_source(gen: _Gen, module: ir.CatMLP | ir.NumMLP, fn: str) -> str:
    a_name, b_name = module.inputs
    a, b = _singular(a_name), _singular(b_name)
    if a == b:
        a, b = f"{a}_a", f"{b}_b"
    entries = _mlp_entries(gen, module)
    formula = _formula(gen, module, entries, a, b)
    if formula is not None:
        return "\n".join([*_table_head(module, fn, a, b), f"    return {formula}"])
    # One default for the whole table; or a lookup over one input with a rule of its own for
    # one value of the other; or one default per value of one input: whichever has the fewest
    # lines, then characters (ties: in that order). Many tables depend mostly on one of their
    # inputs. (An MLP reading one variable twice sees only pairs (x, x): a lookup over x.)
    layouts = [_table_source(gen, module, entries, fn, (a, b), None)]
    for by in (0, 1) if a_name != b_name else ():
        layouts += _split_sources(gen, module, entries, fn, (a, b), by)
    for by in (0, 1) if a_name != b_name else (0,):
        layouts.append(_table_source(gen, module, entries, fn, (a, b), by))
    return min(layouts, key=lambda source: (code_lines(source), len(source)))


def _table_head(module: ir.CatMLP | ir.NumMLP, fn: str, a: str, b: str) -> list[str]:
    return [f"def {fn}({a}, {b}):", f'    """The table of {module.name}."""']


def _table_source(
    gen: _Gen, module: ir.CatMLP | ir.NumMLP, entries, fn: str, args: tuple[str, str], by
) -> str:
    """The table as exceptions to a default: one default for every entry (``by`` None), or
    one per value of input ``by`` (0 or 1), itself a lookup over that input's values."""
    out_lit = {out: gen.lit(module.name, out) for *_, out in entries}
    per_value, default = tables.defaults(entries, by)
    table = [
        f"({gen.lit(module.inputs[0], x)}, {gen.lit(module.inputs[1], y)}): {out_lit[out]}"
        for x, y, out in entries
        if out != tables.default_of((x, y, out), by, per_value, default)
    ]
    const, lines = fn.upper(), _table_head(module, fn, *args)
    fallback = out_lit.get(default, "0")
    # A few exceptions fit in the return statement; more get a constant of their own.
    pairs = f"({args[0]}, {args[1]})"
    local = next(name for name in ("default", "default_", "default__") if name not in args)
    inline = f"    return {{{', '.join(table)}}}.get({pairs}, {fallback if by is None else local})"
    inline = inline if len(inline) <= _WIDTH else None
    if by is not None:
        rows = _lookup_items(gen, module, by, per_value)
        closing = f"}}.get({args[by]}, {fallback})"
        if not table:
            return "\n".join([*lines, _wrap("return {", rows, closing, "    ")])
        where = "below" if inline else f"in {const}"
        lines.append(f"    # {args[by]} decides, but for the pairs {where}")
        lines.append(_wrap(f"{local} = {{", rows, closing, "    "))
        fallback = local
    if not table:
        return "\n".join([*lines, f"    return {fallback}"])
    if inline:
        return "\n".join([*lines, inline])
    lookup = f"    return {const}.get({pairs}, {fallback})"
    return "\n".join([_wrap(f"{const} = {{", table, "}"), "", "", *lines, lookup])


def _lookup_items(
    gen: _Gen, module: ir.CatMLP | ir.NumMLP, by: int, per_value: dict[int, int]
) -> list[str]:
    """``value: output`` items of a lookup over input ``by``, as literals of their types."""
    return [
        f"{gen.lit(module.inputs[by], x)}: {gen.lit(module.name, out)}"
        for x, out in per_value.items()
    ]


def _split_sources(
    gen: _Gen, module: ir.CatMLP | ir.NumMLP, entries, fn: str, args: tuple[str, str], by: int
) -> list[str]:
    """The table as two lookups over input ``by``: one where the other input holds a value c,
    one for the rest; for each c that leaves the rest decided by input ``by`` alone (a table
    with a rule of its own for one special value, such as an end-of-input token)."""
    other, sources = 1 - by, []
    for c in tables.special_values(entries, by):
        rest = [entry for entry in entries if entry[other] != c]
        inside = [entry for entry in entries if entry[other] == c]
        condition = f"    if {args[other]} == {gen.lit(module.inputs[other], c)}:"
        lines = [*_table_head(module, fn, *args), condition]
        for part, indent in ((inside, "        "), (rest, "    ")):
            per_value, default = tables.defaults(part, by)
            rows = _lookup_items(gen, module, by, per_value)
            fallback = gen.lit(module.name, default)
            closing = f"}}.get({args[by]}, {fallback})"
            lines.append(
                _wrap("return {", rows, closing, indent) if rows else f"{indent}return {fallback}"
            )
        sources.append("\n".join(lines))
    return sources


def _statement(module: ir.Module, fn: str) -> str:
    if isinstance(module, ir.CatMLP | ir.NumMLP):
        a, b = module.inputs
        parts = ["apply(", f"{fn}, {a}, {b}", ")"]
    else:
        cat = isinstance(module, ir.CatAttention)
        agg, sel = ("aggregate", "select_closest") if cat else ("aggregate_sum", "select")
        parts = [f"{agg}(", f"{sel}({module.key}, {module.query}, {fn}), {module.value}", ")"]
    line = f"    {module.name} = {''.join(parts)}"
    wrapped = "    {} = {}\n        {}\n    {}".format(module.name, *parts)
    return line if len(line) <= _WIDTH else wrapped


def _layer(name: str) -> str | None:
    match = re.search(r"_(\d+)_\d+$", ir.current_name(name))
    return match[1] if match else None


def _program_source(gen: _Gen) -> str:
    lines = [
        "def program(tokens, positions, ones):",
        '    """Every variable of the program, by name: lists for one input (run), or numpy',
        '    arrays [inputs, length] for a batch of inputs of one length (run_batch)."""',
    ]
    layer = None
    for module, fn in zip(gen.p.modules, gen.functions, strict=True):
        if _layer(module.name) not in (None, layer):
            layer = _layer(module.name)
            lines += ["", f"    # layer {layer}"]
        lines.append(_statement(module, fn))
    # The body's only locals are the inputs and one variable per module: all of them, by name.
    lines += ["", "    return locals()"]
    return "\n".join(lines)


def _summary(program: ir.Program, weights_file: str, header: str, example: Sequence[str]) -> str:
    counts = Counter(type(m) for m in program.modules)
    counts["layer"] = len({_layer(m.name) for m in program.modules} - {None})
    arch = ", ".join(
        f"{counts[t]} {what}{'' if counts[t] == 1 else 's'}"
        for what, t in _KINDS
        if counts[t] or t != "layer"
    )
    facts = (
        f"Architecture: {arch}. Categorical variables take {program.d_var} values; inputs "
        f"hold at most {program.n_ctx} tokens; attention is "
        f"{'causal' if program.causal else 'bidirectional'}."
    )
    # Without an input of the task at hand, a few tokens of the vocabulary show the call.
    shown = example or [t for t in program.vocab[1:] if len(repr(t)) <= 12][:3]
    call = f"    run({list(shown)!r})"
    return "\n".join(
        [
            f"Transformer Program for task {program.task!r}, generated by tprog from its IR.",
            "",
            *textwrap.wrap(facts, 96, break_long_words=False, break_on_hyphens=False),
            *(["", header] if header.strip() else []),
            "",
            "Usage: run(tokens) -> list[str], one label per token, for example",
            *textwrap.wrap(call, 96, subsequent_indent=" " * 8, break_long_words=False),
            "run_batch(inputs) -> list[list[str]] runs many inputs at once, with numpy.",
            "Bad input (empty, too long, padding, unknown token) raises ValueError.",
            f"Needs two files beside it: {RUNTIME_FILE!r}, the helpers and run/run_batch (the",
            f"runtime, the same in every tprog program), and {weights_file!r}, its vocabulary,",
            "labels and classifier weights. Standard library only (run_batch imports numpy);",
            "prints nothing.",
        ]
    )


def _weights_json(gen: _Gen) -> str:
    """The classifier's data: its weights, the order it adds them in (``terms``: float
    addition is not associative) and which categorical variables hold tokens."""
    clf, categorical, numerical = gen.p.classifier, {}, {}
    for name in clf.terms:
        if name in clf.categorical:
            categorical[name] = [[float(w) for w in row] for row in clf.categorical[name]]
        elif name in clf.numerical:
            numerical[name] = [float(w) for w in clf.numerical[name]]
        else:
            raise ValueError(f"the classifier has no weights for {name!r}.")
    data = {
        "n_ctx": int(gen.p.n_ctx),
        "d_var": int(gen.p.d_var),
        "causal": bool(gen.p.causal),
        "vocab": list(gen.p.vocab),
        "labels": list(clf.labels),
        "unk": gen.p.unk,
        "masked": [bool(m) for m in clf.masked],
        "categorical": categorical,
        "numerical": numerical,
        "terms": list(clf.terms),
        "token_valued": [name for name in categorical if gen.token_valued(name)],
    }
    try:  # NaN and infinities would make Python's argmax differ from numpy's
        return json.dumps(data, sort_keys=True, allow_nan=False) + "\n"
    except ValueError:
        raise ValueError("the classifier's weights must be finite numbers.") from None


def program_to_python(
    program: ir.Program,
    *,
    stem: str = "program",
    header: str = "",
    example: Sequence[str] = (),
) -> tuple[str, str]:
    """Returns (module_source, weights_json_text) of a module to be written as ``<stem>.py``:
    it reads ``<stem>_weights.json`` once, at import, and runs the runtime (RUNTIME_SOURCE),
    both from files the caller writes beside it (write_program does). ``example``, an input of
    the program's task, is the one its docstring shows."""
    if not stem or Path(stem).name != stem or f"{stem}.py" == RUNTIME_FILE or stem in {".", ".."}:
        raise ValueError(f"stem must name a file in the program's folder, not {stem!r}.")
    weights_file = f"{stem}_weights.json"
    gen = _Gen(program)
    weights = _weights_json(gen)
    functions = []
    for module, fn in zip(program.modules, gen.functions, strict=True):
        is_attention = isinstance(module, ir.CatAttention | ir.NumAttention)
        source = _predicate_source if is_attention else _mlp_source
        functions.append(source(gen, module, fn) + "\n\n\n")
    slots = {
        "DOC": _docstring(_summary(program, weights_file, header, example)),
        "RUNTIME": repr(RUNTIME_FILE),
        "BOUND": ", ".join(BOUND_NAMES),
        "FUNCTIONS": "".join(functions),
        "PROGRAM": _program_source(gen),
    }
    return re.sub(r"@([A-Z_]+)@", lambda m: slots[m[1]], _TEMPLATE), weights


def write_program(
    program: ir.Program, path: Path, header: str = "", example: Sequence[str] = ()
) -> None:
    """Write the module (`program_to_python`) to ``path``, its weights to
    ``<stem>_weights.json`` and the runtime to RUNTIME_FILE beside it, each atomically (temp
    file + rename), the module last: it needs the other two."""
    path = Path(path)
    if path.name == RUNTIME_FILE:
        raise ValueError(f"a program cannot be called {RUNTIME_FILE!r}: that is its runtime.")
    source, weights = program_to_python(program, stem=path.stem, header=header, example=example)
    weights_file = f"{path.stem}_weights.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    files = (
        (path.with_name(weights_file), weights),
        (path.with_name(RUNTIME_FILE), RUNTIME_SOURCE),
    )
    for target, text in (*files, (path, source)):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_program_module(path: Path) -> types.ModuleType:
    """Import a generated program from its file, under a fresh module name each time."""
    path = Path(path).resolve()
    spec = importlib.util.spec_from_file_location(f"_tprog_program_{next(_counter)}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {str(path)!r} as a Python module.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
