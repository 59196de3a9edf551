"""Generated programs compute exactly what the IR interpreter does; data never becomes code."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_equivalence import random_key_map
from tests.test_induction_circuit import induction_program
from tprog import ir
from tprog.codegen import load_program_module, program_to_python, write_program
from tprog.codegen_template import RUNTIME_FILE, RUNTIME_SOURCE
from tprog.errors import InputError
from tprog.interpret import run_program

PLAIN = ("a", "b", "c", "d", "<s>", "</s>", "<unk>")
HOSTILE = (
    "'); __import__('os').system('echo pwned') #",
    '"""',
    "'''",
    "\\",
    "\\n",
    "\n",
    "é€😀",
    "run",
    "print",
    "__import__",
    "select_closest",
    "{x}",
    "\r",
    "\x00",
    "\ud800",
    "<unk>",
)
HOSTILE_LABELS = ('"""', "'); print('pwned') #", "\\", "ñ", "\n", "LABELS")


def random_program(seed: int, tokens: tuple[str, ...] = PLAIN, labels=None) -> ir.Program:
    """A random but well-formed IR program; numerical MLP tables cover the exact reachable range."""
    rng = np.random.default_rng(seed)
    d_var = int(rng.integers(3, 8))
    n_ctx = int(rng.integers(3, d_var + 1))
    picked = rng.choice(len(tokens), size=int(rng.integers(2, d_var)), replace=False)
    vocab = ("<pad>", *(tokens[i] for i in sorted(picked)))
    unk = "<unk>" if "<unk>" in vocab else None
    cat = {"tokens": "token", "positions": "int"}  # name -> value type
    num = {"ones": 1}  # name -> largest value it can hold
    variables = list(ir.INPUT_VARIABLES)
    modules: list[ir.Module] = []

    def pick(names):
        return names[int(rng.integers(len(names)))]

    def key_map():  # keys compared through a random map, or as they are
        return random_key_map(rng, d_var, 0.3)

    def add(module, kind, value_type="int"):
        modules.append(module)
        variables.append(ir.Variable(module.name, kind, value_type))
        if kind == "categorical":
            cat[module.name] = value_type

    # Variables are named as older tprog named them (``attn_0_1_outputs``, now ``attn_0_1``):
    # IR files written then must still generate working programs.
    for layer in range(int(rng.integers(1, 4))):
        cat_now, num_now = list(cat), list(num)  # heads read earlier layers only
        for h in range(int(rng.integers(0, 3))):
            q, k, v = pick(cat_now), pick(cat_now), pick(cat_now)
            pred = tuple(int(x) for x in rng.integers(0, d_var, d_var))
            head = ir.CatAttention(f"attn_{layer}_{h}_outputs", q, k, v, pred, key_map())
            add(head, "categorical", cat[v])
        for h in range(int(rng.integers(0, 3))):
            q, k = pick(cat_now), pick(cat_now)
            v = pick([u for u in num_now if num[u] * n_ctx <= 60] or ["ones"])
            pred = tuple(int(x) for x in rng.integers(0, d_var, d_var))
            add(
                ir.NumAttention(f"num_attn_{layer}_{h}_outputs", q, k, v, pred, key_map()),
                "numerical",
            )
            num[modules[-1].name] = num[v] * n_ctx
        for m in range(int(rng.integers(0, 2))):
            a, b = pick(list(cat)), pick(list(cat))
            out_type = "token" if rng.random() < 0.3 else "int"  # hand-written programs may
            table = _table(rng, d_var, d_var, len(vocab) if out_type == "token" else d_var)
            add(ir.CatMLP(f"mlp_{layer}_{m}_outputs", (a, b), table), "categorical", out_type)
        for m in range(int(rng.integers(0, 2))):
            a, b = pick(list(num)), pick(list(num))
            lows = tuple(1 if x == "ones" else 0 for x in (a, b))
            shape = [num[x] - low + 1 for x, low in zip((a, b), lows, strict=True)]
            out_type = "token" if rng.random() < 0.3 else "int"
            table = _table(rng, *shape, len(vocab) if out_type == "token" else d_var)
            add(
                ir.NumMLP(f"num_mlp_{layer}_{m}_outputs", (a, b), lows, table),
                "categorical",
                out_type,
            )
    return ir.Program(
        "random",
        vocab,
        n_ctx,
        d_var,
        bool(rng.integers(2)),
        tuple(variables),
        tuple(modules),
        _classifier(rng, variables, d_var, labels),
        unk,
    )


def _table(rng, rows: int, cols: int, d_var: int) -> tuple[tuple[int, ...], ...]:
    """Mostly one value with exceptions, like real tables, or one per row or column; sometimes
    fully random."""
    kind = rng.random()
    if kind < 0.3:
        return tuple(tuple(int(x) for x in row) for row in rng.integers(0, d_var, (rows, cols)))
    base = int(rng.integers(d_var))
    if kind < 0.5:  # decided by one input but for exceptions: a default per row or column
        base = rng.integers(0, d_var, (rows, 1)) if kind < 0.4 else rng.integers(0, d_var, cols)
    noisy = rng.random((rows, cols)) < 0.3
    values = np.where(noisy, rng.integers(0, d_var, (rows, cols)), base)
    return tuple(tuple(int(x) for x in row) for row in values)


def _weights(rng, shape) -> np.ndarray:
    """Floats with exact ties: a few small dyadic values mixed with arbitrary ones."""
    ties = rng.choice([0.0, 0.5, -0.5, 1.0, 0.1, 0.2, 0.3], size=shape)
    return np.where(rng.random(shape) < 0.5, ties, rng.normal(size=shape))


def _classifier(rng, variables, d_var: int, labels) -> ir.Classifier:
    labels = labels or tuple(f"l{i}" for i in range(int(rng.integers(2, 6))))
    masked = [bool(x) for x in rng.random(len(labels)) < 0.3]
    masked[int(rng.integers(len(labels)))] = False
    terms = [v.name for v in variables]
    if rng.random() < 0.5:
        terms = [terms[i] for i in rng.permutation(len(terms))]
    cat = {
        v.name: tuple(map(tuple, _weights(rng, (d_var, len(labels))).tolist()))
        for v in variables
        if v.kind == "categorical"
    }
    num = {
        v.name: tuple(_weights(rng, len(labels)).tolist())
        for v in variables
        if v.kind == "numerical"
    }
    return ir.Classifier(tuple(labels), tuple(masked), tuple(terms), cat, num)


def random_inputs(program: ir.Program, seed: int, count: int = 200) -> list[list[str]]:
    rng = np.random.default_rng(seed + 1)
    pool = list(program.vocab[1:]) + (["never-seen"] if program.unk else [])
    return [
        [pool[i] for i in rng.integers(0, len(pool), int(rng.integers(1, program.n_ctx + 1)))]
        for _ in range(count)
    ]


def generate(program: ir.Program, directory: Path, name: str = "program.py", header: str = ""):
    path = directory / name
    write_program(program, path, header=header)
    return path, load_program_module(path)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(0, 2**32 - 1))
def test_generated_code_agrees_with_interpreter(tmp_path: Path, seed: int) -> None:
    program = random_program(seed)
    _, module = generate(program, tmp_path, f"program_{seed}.py")
    inputs = random_inputs(program, seed)
    expected = run_program(program, inputs)
    assert [module.run(tokens) for tokens in inputs] == expected
    assert module.run_batch(inputs) == expected


# --- hostile data ------------------------------------------------------------------------------

_SANDBOX = r"""
import builtins, importlib.util, json, os, pathlib, subprocess, sys

import numpy  # loaded before the traps (its import uses eval); the module may use it in run_batch
import pkgutil  # runpy.run_path imports it on first use, and its import uses eval (namedtuple)

path, inputs_file, marker = sys.argv[1:4]


def tripped(*args, **kwargs):
    with open(marker, "w") as handle:
        handle.write(repr(args))
    raise RuntimeError("side effect")


real_import = builtins.__import__


allowed = ["runpy", "json", "pathlib", "bisect"]


def guarded_import(name, globals=None, *args, **kwargs):
    # the program, and the runtime it runs beside it (runpy names it <run_path>)
    generated = (globals or {}).get("__name__") in {"generated", "<run_path>"}
    if generated and name.split(".")[0] not in allowed:
        tripped(name)
    return real_import(name, globals, *args, **kwargs)


os.system = os.popen = os.execv = os.remove = os.unlink = tripped
subprocess.Popen = subprocess.run = builtins.print = builtins.eval = builtins.input = tripped
builtins.__import__ = guarded_import
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("generated", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
with open(inputs_file) as handle:
    inputs = json.load(handle)
outputs = [module.run(tokens) for tokens in inputs]
new = sorted(name for name in set(sys.modules) - before if name != "generated")
allowed.append("numpy")  # run_batch, and only run_batch, imports numpy
batched = module.run_batch(inputs)
result = {"outputs": outputs, "batched": batched, "new_modules": new, "doc": module.__doc__}
sys.stdout.write(json.dumps(result))
"""


def run_in_fresh_interpreter(path: Path, inputs, cwd: Path) -> dict:
    inputs_file, marker = cwd / "inputs.json", cwd / "side_effect"
    inputs_file.write_text(json.dumps(inputs))
    result = subprocess.run(
        [sys.executable, "-c", _SANDBOX, str(path), str(inputs_file), str(marker)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), marker.read_text()
    assert result.stderr == ""
    return json.loads(result.stdout)


def top_level_imports(source: str) -> list[str]:
    tree = ast.parse(source)
    return [
        ast.unparse(node) for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
    ]


def all_imports(source: str) -> set[str]:
    """Every import statement, at top level or inside functions."""
    imports = (node for node in ast.walk(ast.parse(source)))
    return {ast.unparse(node) for node in imports if isinstance(node, ast.Import | ast.ImportFrom)}


def test_the_runtime_imports_the_standard_library_and_numpy_only_for_batches() -> None:
    assert top_level_imports(RUNTIME_SOURCE) == [
        "import json",
        "from bisect import bisect_right",
        "from pathlib import Path",
    ]
    assert all_imports(RUNTIME_SOURCE) == {*top_level_imports(RUNTIME_SOURCE), "import numpy as np"}
    tree = ast.parse(RUNTIME_SOURCE)
    uses_numpy = {  # the functions that import numpy: run_batch and its numpy helpers only
        function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        and any(isinstance(node, ast.Import) for node in ast.walk(function))
    }
    assert uses_numpy - {"run_batch"} == {name for name in uses_numpy if name.startswith("_")}


HEADER = 'Accuracy 1.0 """ \\" \\\n\x00 \u2028 é @RUN@ {x}\nimport os; os.system("echo pwned")\n"'


@pytest.mark.parametrize("seed", range(6))
def test_hostile_vocabulary_labels_task_and_header(tmp_path: Path, seed: int) -> None:
    program = random_program(seed, HOSTILE, HOSTILE_LABELS[: 2 + seed % 4])
    program = dataclasses.replace(program, task="t'); __import__('os').system('x') #\"\"\"")
    source, _ = program_to_python(program, header=HEADER)
    ast.parse(source)
    assert top_level_imports(source) == ["import runpy", "from pathlib import Path"]
    assert all_imports(source) == {"import runpy", "from pathlib import Path"}
    path = tmp_path / "gen" / "program.py"
    write_program(program, path, header=HEADER)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    inputs = random_inputs(program, seed, 100)
    result = run_in_fresh_interpreter(path, inputs, elsewhere)
    assert result["outputs"] == result["batched"] == run_program(program, inputs)
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in result["new_modules"])
    assert HEADER in result["doc"] and repr(program.task) in result["doc"]


def test_every_vocabulary_entry_is_a_literal(tmp_path: Path) -> None:
    """No hostile token may appear in the source outside a string literal or the docstring."""
    program = random_program(3, HOSTILE)
    source, weights = program_to_python(program)
    tree = ast.parse(source)
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not names & {"__import__", "os", "system", "pwned", "echo"}
    assert json.loads(weights)["vocab"] == list(program.vocab)


# --- behaviour of the generated module -----------------------------------------------------------


def test_import_from_another_working_directory(tmp_path: Path, monkeypatch) -> None:
    program = random_program(11)
    path, _ = generate(program, tmp_path / "gen")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    module = load_program_module(path)
    inputs = random_inputs(program, 11, 50)
    assert [module.run(tokens) for tokens in inputs] == run_program(program, inputs)
    assert module.run_batch(inputs) == run_program(program, inputs)
    assert run_in_fresh_interpreter(path, inputs, elsewhere)["outputs"] == run_program(
        program, inputs
    )


def test_generation_is_deterministic(tmp_path: Path) -> None:
    program = random_program(5)
    first = program_to_python(program, header="h")
    assert program_to_python(program, header="h") == first
    assert program_to_python(ir.Program.from_json(program.to_json()), header="h") == first
    path = tmp_path / "p.py"
    write_program(program, path, header="h")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_program(program, path, header="h")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # no temp files left behind
    assert sorted(before) == ["p.py", "p_weights.json", RUNTIME_FILE]
    assert before[RUNTIME_FILE].decode() == RUNTIME_SOURCE
    assert before["p.py"].decode() == program_to_python(program, stem="p", header="h")[0]


def _interpreter_error(program: ir.Program, tokens) -> str:
    with pytest.raises(InputError) as caught:
        run_program(program, [tokens])
    return str(caught.value)


def test_bad_inputs_raise_value_error_like_the_interpreter(tmp_path: Path) -> None:
    program = dataclasses.replace(random_program(2), unk=None)
    _, module = generate(program, tmp_path)
    known = program.vocab[1]
    cases = {
        "is empty": [],
        "context holds": [known] * (program.n_ctx + 1),
        "is not in the vocabulary": [known, "never-seen"],
        "is padding": [known, "<pad>"],
    }
    for words, tokens in cases.items():
        with pytest.raises(ValueError, match=words) as caught:
            module.run(tokens)
        assert str(caught.value) == _interpreter_error(program, tokens)
        with pytest.raises(ValueError) as caught_batch:
            module.run_batch([[known], [known, known][: program.n_ctx], tokens, []])
        assert str(caught_batch.value) == f"input 2: {caught.value}"
    assert module.run_batch([]) == []


def test_unknown_tokens_map_to_unk(tmp_path: Path) -> None:
    program = random_program(9, (*PLAIN, "<unk>"))
    program = dataclasses.replace(program, vocab=(*program.vocab[:-1], "<unk>"), unk="<unk>")
    _, module = generate(program, tmp_path)
    tokens = [program.vocab[1], "never-seen", "also-new"][: program.n_ctx]
    assert module.run(tokens) == run_program(program, [tokens])[0]
    assert module.run_batch([tokens]) == run_program(program, [tokens])
    with pytest.raises(ValueError, match="padding"):
        module.run(["<pad>"])
    with pytest.raises(ValueError, match=r"^input 1: .* padding"):
        module.run_batch([tokens, ["<pad>"]])


@pytest.mark.parametrize("causal", [False, True])
def test_select_closest_matches_the_interpreter_exhaustively(tmp_path: Path, causal) -> None:
    from tprog.interpret import _select_closest, allowed_keys

    program = dataclasses.replace(random_program(1), causal=causal, n_ctx=6)
    _, module = generate(program, tmp_path)

    def is_one(query, key):
        return key == 1

    for n in range(1, 7):
        allowed = allowed_keys(np.array([n]), n, causal)
        every = np.array([[(bits >> j) & 1 for j in range(n)] for bits in range(2**n)])
        matches = every[:, None, :].astype(bool) & allowed  # [2**n, n, n]
        positions = np.broadcast_to(np.arange(n), every.shape)
        for keys, want in zip(every.tolist(), matches, strict=True):
            got = module.select_closest(keys, list(range(n)), is_one)
            assert got == _select_closest(want[None])[0].tolist()
            counts = module.aggregate_sum(module.select(keys, keys, is_one), [1] * n)
            assert counts == want.sum(-1).tolist()
        # the numpy versions (run_batch), on every key pattern at once
        got = module.select_closest(every, positions, is_one)
        assert (got == _select_closest(matches)).all()
        counts = module.aggregate_sum(module.select(every, every, is_one), np.ones_like(every))
        assert (counts == matches.sum(-1)).all()


def _hand_program() -> ir.Program:
    """tokens 'a'/'b'/'c': head reads the previous 'a'; an MLP over (token, position)."""
    vocab = ("<pad>", "a", "b", "c")
    variables = (
        *ir.INPUT_VARIABLES,
        ir.Variable("attn_0_0", "categorical", "token"),
        ir.Variable("num_attn_0_0", "numerical"),
        ir.Variable("mlp_0_0", "categorical"),
        ir.Variable("num_mlp_0_0", "categorical"),
    )
    table = tuple(tuple(2 if (a, b) == (1, 3) else 1 for b in range(4)) for a in range(4))
    modules = (
        ir.CatAttention("attn_0_0", "tokens", "tokens", "tokens", (0, 1, 1, 2)),
        ir.NumAttention("num_attn_0_0", "tokens", "tokens", "ones", (3, 1, 0, 3)),
        ir.CatMLP("mlp_0_0", ("tokens", "positions"), table),
        ir.NumMLP("num_mlp_0_0", ("ones", "num_attn_0_0"), (1, 0), ((0, 0, 3, 0, 0),)),
    )
    names = [v.name for v in variables]
    clf = ir.Classifier(
        labels=("x", "y"),
        masked=(False, False),
        terms=tuple(names),
        categorical={v.name: ((0.0, 0.0),) * 4 for v in variables if v.kind == "categorical"},
        numerical={"ones": (0.0, 0.0), "num_attn_0_0": (0.0, 1.0)},
    )
    return ir.Program("hand", vocab, 4, 4, False, variables, modules, clf)


def test_generated_source_reads_like_a_program(tmp_path: Path) -> None:
    program = _hand_program()
    source, _ = program_to_python(program)
    assert "def predicate_0_0(q_token, k_token):\n" in source
    # the largest group of query values sharing a target is the fallback; one exception
    assert "    return k_token == {'c': 'b'}.get(q_token, 'a')\n" in source
    assert "def num_predicate_0_0(q_token, k_token):" in source
    # 'b' targets id 0 (<pad>), which no key ever holds; 'a' and 'c' ask for themselves
    assert "    return q_token != 'b' and k_token == q_token\n" in source
    assert "    return {('a', 3): 2}.get((token, position), 1)\n" in source
    # `ones` is always 1: the table is a function of its other input, printed as a lookup
    assert "    return {2: 3}.get(num_attn_0_0, 0)\n" in source
    assert "= aggregate(select_closest(tokens, tokens, predicate_0_0), tokens)\n" in source
    assert "= aggregate_sum(select(tokens, tokens, num_predicate_0_0), ones)\n" in source
    assert "    mlp_0_0 = apply(table_0_0, tokens, positions)\n" in source
    assert "(num_table_0_0, ones, num_attn_0_0)\n" in source
    _, module = generate(program, tmp_path)
    inputs = [["a", "b", "c"], ["c", "c", "b", "a"], ["b"], ["a", "a", "c"]]
    for tokens in inputs:
        assert module.run(tokens) == run_program(program, [tokens])[0]
    assert module.run_batch(inputs) == run_program(program, inputs)
    assert module.run_batch(tuple(tuple(tokens) for tokens in inputs)) == module.run_batch(inputs)
    runtime = module._BIND.__globals__  # the namespace the runtime runs in, this program's own
    runtime["_MOST_SELECTED"] = 20  # at most 20 // 3**2 = 2 inputs of length 3 at a time
    assert module.run_batch(inputs * 3) == run_program(program, inputs * 3)
    # program() gives every variable, for one input (lists) or a batch (arrays [inputs, n])
    variables = module.program(["c", "a", "b"], [0, 1, 2], [1, 1, 1])
    assert variables["attn_0_0"] == ["b", "a", "a"]  # c wants b; a and b want a
    assert variables["num_attn_0_0"] == [1, 1, 0]  # c counts c, a counts a, b none


def test_invalid_programs_are_rejected() -> None:
    program = _hand_program()
    bad_name = dataclasses.replace(program.modules[2], name="mlp-0")
    with pytest.raises(ValueError, match="identifier"):
        program_to_python(dataclasses.replace(program, modules=(*program.modules[:2], bad_name)))
    clash = dataclasses.replace(program.modules[2], name="select")
    with pytest.raises(ValueError, match="clash"):
        program_to_python(dataclasses.replace(program, modules=(*program.modules[:2], clash)))
    with pytest.raises(ValueError, match="repeated"):
        program_to_python(dataclasses.replace(program, vocab=("<pad>", "a", "a", "b")))
    with pytest.raises(ValueError, match="stem must name a file"):
        program_to_python(program, stem="../w")
    weights = {**program.classifier.numerical, "ones": (float("nan"), 0.0)}
    nan = dataclasses.replace(program.classifier, numerical=weights)
    with pytest.raises(ValueError, match="finite"):
        program_to_python(dataclasses.replace(program, classifier=nan))


def test_generated_code_is_ruff_clean(tmp_path: Path) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not os.path.exists(ruff):
        pytest.skip("ruff is not installed")
    for seed in range(8):
        tokens = HOSTILE if seed % 2 else PLAIN
        generate(random_program(seed, tokens), tmp_path, f"p{seed}.py", header=HEADER)
    result = subprocess.run(
        [
            ruff,
            "check",
            "--isolated",
            "--line-length",
            "100",
            "--select",
            "E,F,W,B,UP,SIM,RUF,I",
            "--ignore",
            "SIM116",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_positional_predicates_print_as_offsets() -> None:
    """The induction circuit's previous-token head: k == q - 1, except where q - 1 is not a
    position (query 0 asks for the last position)."""
    k = 6
    vocab = ("<pad>", "<s>", "a", "b", "1", "2")
    program = induction_program(vocab, ("<pad>", "1", "2", "<unk>"), k)
    source, _ = program_to_python(program)
    assert "    return k_position == (5 if q_position == 0 else q_position - 1)\n" in source


def test_predicates_wanting_several_keys_print_as_a_lookup(tmp_path: Path) -> None:
    """A reversing head (query i wants key n - 1 - i) has no single rule: one lookup line."""
    k = 6
    vocab = ("<pad>", "<s>", "a", "b", "1", "2")
    program = induction_program(vocab, ("<pad>", "1", "2", "<unk>"), k)
    mirror = tuple(k - 1 - q for q in range(k))  # 5, 4, 3, 2, 1, 0
    head = dataclasses.replace(program.modules[0], predicate=mirror)
    program = dataclasses.replace(program, modules=(head, *program.modules[1:]))
    source, _ = program_to_python(program)
    assert (
        "def predicate_0_0(q_position, k_position):\n"
        '    """The predicate of attn_0_0."""\n'
        "    return k_position == {1: 4, 2: 3, 3: 2, 4: 1, 5: 0}.get(q_position, 5)\n"
    ) in source
    _, module = generate(program, tmp_path)
    # Causal: query i sees keys j <= i, so queries 0..2 find no match and take BOS (0).
    selected = module.select_closest(list(range(k)), list(range(k)), module.predicate_0_0)
    assert selected == [0, 0, 0, 2, 1, 0]
    inputs = [["<s>", "a", "1", "b", "2", "a"], ["<s>", "b"], ["<s>", "a", "1", "a"]]
    assert [module.run(tokens) for tokens in inputs] == run_program(program, inputs)
    assert module.run_batch(inputs) == run_program(program, inputs)


def _positional_mlp_program(table: tuple[tuple[int, ...], ...]) -> ir.Program:
    """One head copying the previous position, then an MLP over (position, that position)."""
    k = 6
    vocab = ("<pad>", "<s>", "a", "b", "1", "2")
    program = induction_program(vocab, ("<pad>", "1", "2", "<unk>"), k)
    head = dataclasses.replace(program.modules[0], value="positions")
    mlp = ir.CatMLP("mlp_0_0", ("positions", "attn_0_0"), table)
    weights = tuple(tuple(float(i == j % 3) for j in range(3)) for i in range(k))
    classifier = dataclasses.replace(
        program.classifier,
        labels=program.classifier.labels[1:],
        masked=program.classifier.masked[1:],
        terms=("mlp_0_0",),
        categorical={"mlp_0_0": weights},
        numerical={},
    )
    variables = (
        *ir.INPUT_VARIABLES,
        ir.Variable("attn_0_0", "categorical", "int"),
        ir.Variable("mlp_0_0", "categorical", "int"),
    )
    return dataclasses.replace(
        program, variables=variables, modules=(head, mlp), classifier=classifier
    )


@pytest.mark.parametrize(
    ("formula", "function"),
    [
        ("min(position, attn_0_0)", min),
        ("max(position, attn_0_0)", max),
        ("int(position == attn_0_0)", lambda a, b: int(a == b)),
        ("int(position < attn_0_0)", lambda a, b: int(a < b)),
        ("int(position > attn_0_0)", lambda a, b: int(a > b)),
        ("attn_0_0", lambda a, b: b),
    ],
)
def test_mlp_tables_that_are_a_formula_print_as_it(formula, function, tmp_path: Path) -> None:
    table = tuple(tuple(function(a, b) for b in range(6)) for a in range(6))
    program = _positional_mlp_program(table)
    source, _ = program_to_python(program)
    assert f'    """The table of mlp_0_0."""\n    return {formula}\n' in source
    _, module = generate(program, tmp_path)
    inputs = [["<s>", "a", "1", "b", "2", "a"], ["<s>", "b"], ["<s>", "a", "1", "a"], ["<s>"]]
    assert [module.run(tokens) for tokens in inputs] == run_program(program, inputs)
    assert module.run_batch(inputs) == run_program(program, inputs)


def test_a_table_off_its_formula_in_one_entry_stays_a_table() -> None:
    table = [[min(a, b) for b in range(6)] for a in range(6)]
    table[2][4] = 5
    source, _ = program_to_python(_positional_mlp_program(tuple(map(tuple, table))))
    assert "return TABLE_0_0.get((position, attn_0_0), " in source
    assert "min(" not in source.split("def table_0_0")[1].split("\n\n")[0]


POSITIONAL_INPUTS = [
    ["<s>", "a", "1", "b", "2", "a"],
    ["<s>", "b"],
    ["<s>", "a", "1", "a"],
    ["<s>"],
]


def _generated_agrees(program: ir.Program, tmp_path: Path):
    """The generated module, checked against the interpreter (run and run_batch)."""
    _, module = generate(program, tmp_path)
    expected = run_program(program, POSITIONAL_INPUTS)
    assert [module.run(tokens) for tokens in POSITIONAL_INPUTS] == expected
    assert module.run_batch(POSITIONAL_INPUTS) == expected
    return module


def _table_source(source: str, start: str) -> str:
    return source[source.index(start) : source.index("\n\n\n# --- The runtime")]


def test_a_table_decided_mostly_by_one_input_prints_its_defaults(tmp_path: Path) -> None:
    """Rows of position 0..5: position decides (p % 3), but for two entries."""
    table = [[a % 3 for b in range(6)] for a in range(6)]
    table[1][4], table[4][0] = 5, 2
    program = _positional_mlp_program(tuple(map(tuple, table)))
    assert _table_source(program_to_python(program)[0], "def table_0_0") == (
        "def table_0_0(position, attn_0_0):\n"
        '    """The table of mlp_0_0."""\n'
        "    # position decides, but for the pairs below\n"
        "    default = {1: 1, 2: 2, 4: 1, 5: 2}.get(position, 0)\n"
        "    return {(1, 4): 5, (4, 0): 2}.get((position, attn_0_0), default)"
    )
    module = _generated_agrees(program, tmp_path)
    assert [[module.table_0_0(a, b) for b in range(6)] for a in range(6)] == table


def test_a_table_with_a_rule_of_its_own_for_one_value_prints_two_lookups(tmp_path: Path) -> None:
    # position decides (p % 3), but where attn_0_0 is 5 another rule of position does
    table = tuple(tuple(a * 5 % 6 if b == 5 else a % 3 for b in range(6)) for a in range(6))
    program = _positional_mlp_program(table)
    assert _table_source(program_to_python(program)[0], "def table_0_0") == (
        "def table_0_0(position, attn_0_0):\n"
        '    """The table of mlp_0_0."""\n'
        "    if attn_0_0 == 5:\n"
        "        return {1: 5, 2: 4, 3: 3, 4: 2, 5: 1}.get(position, 0)\n"
        "    return {1: 1, 2: 2, 4: 1, 5: 2}.get(position, 0)"
    )
    module = _generated_agrees(program, tmp_path)
    assert tuple(tuple(module.table_0_0(a, b) for b in range(6)) for a in range(6)) == table


def test_a_table_of_one_input_is_a_lookup_over_it(tmp_path: Path) -> None:
    table = tuple(tuple((b * 5) % 6 for b in range(6)) for a in range(6))  # attn_0_0 alone
    source, _ = program_to_python(_positional_mlp_program(table))
    assert "    return {1: 5, 2: 4, 3: 3, 4: 2, 5: 1}.get(attn_0_0, 0)\n" in source
    assert "TABLE_0_0" not in source
    # An MLP reading one variable twice sees only (x, x): a lookup over x as well.
    program = _positional_mlp_program(tuple(tuple(a * 5 % 6 for b in range(6)) for a in range(6)))
    mlp = dataclasses.replace(program.modules[1], inputs=("positions", "positions"))
    program = dataclasses.replace(program, modules=(program.modules[0], mlp))
    source, _ = program_to_python(program)
    assert "    return {1: 5, 2: 4, 3: 3, 4: 2, 5: 1}.get(position_a, 0)\n" in source
    _generated_agrees(program, tmp_path)


@pytest.mark.parametrize(
    ("predicate", "expected"),
    [
        # query 1 asks for a key value no key holds (NEVER); the rest want several keys
        (
            (5, ir.NEVER, 3, 3, 1, 0),
            "    # a query mapped to None matches no key\n"
            "    return k_position == {0: 5, 1: None, 4: 1, 5: 0}.get(q_position, 3)\n",
        ),
        # most queries match nothing: the lookup lists only those that match a key
        (
            (ir.NEVER, ir.NEVER, ir.NEVER, 1, 5, ir.NEVER),
            "    # a query not listed matches no key\n"
            "    return k_position == {3: 1, 4: 5}.get(q_position)\n",
        ),
        # ... unless one rule covers them all: one condition
        (
            (ir.NEVER, ir.NEVER, ir.NEVER, 1, 2, ir.NEVER),
            "    return q_position in {3, 4} and k_position == q_position - 2\n",
        ),
    ],
)
def test_predicates_matching_nothing_for_some_queries(predicate, expected, tmp_path) -> None:
    k = 6
    vocab = ("<pad>", "<s>", "a", "b", "1", "2")
    program = induction_program(vocab, ("<pad>", "1", "2", "<unk>"), k)
    head = dataclasses.replace(program.modules[0], predicate=predicate)
    program = dataclasses.replace(program, modules=(head, *program.modules[1:]))
    source, _ = program_to_python(program)
    assert expected in source
    _, module = generate(program, tmp_path)
    inputs = [["<s>", "a", "1", "b", "2", "a"], ["<s>", "b"], ["<s>", "a", "1", "a"]]
    assert [module.run(tokens) for tokens in inputs] == run_program(program, inputs)
    assert module.run_batch(inputs) == run_program(program, inputs)


@pytest.mark.parametrize(
    ("predicate", "key_map", "expected"),
    [
        # positions relabelled as halves: query q matches the keys of half q
        (
            (0, 1, 2, ir.NEVER, ir.NEVER, ir.NEVER),
            (0, 0, 1, 1, 2, 2),
            "    return k_position in {0: {0, 1}, 1: {2, 3}, 2: {4, 5}}.get(q_position, set())\n",
        ),
        # every query wants the same label: one set, whatever the query
        ((1,) * 6, (0, 1, 0, 1, 6, 1), "    return k_position in {1, 3, 5}\n"),
        # one label with one key, the other with three; a value mapped to 6 matches nothing
        (
            (0, 0, 0, 0, 1, 1),
            (6, 1, 0, 1, 6, 1),
            "    return k_position in ({1, 3, 5} if q_position in {4, 5} else {2})\n",
        ),
    ],
)
def test_keys_compared_through_a_key_map_print_as_sets(
    predicate, key_map, expected, tmp_path
) -> None:
    k = 6
    vocab = ("<pad>", "<s>", "a", "b", "1", "2")
    program = induction_program(vocab, ("<pad>", "1", "2", "<unk>"), k)
    head = dataclasses.replace(program.modules[0], predicate=predicate, key_map=key_map)
    program = dataclasses.replace(program, modules=(head, *program.modules[1:]))
    source, _ = program_to_python(program)
    assert expected in source
    _generated_agrees(program, tmp_path)


def test_a_rule_too_long_for_one_line_prints_as_a_branch(tmp_path: Path) -> None:
    k = 40
    vocab = ("<pad>", "<s>", "a", "b", "1", "2", *(f"x{i}" for i in range(6, k)))
    program = induction_program(vocab, ("<pad>", "1", "2", "<unk>"), k)
    # every third query wants the key before it, the rest none
    predicate = tuple(q - 1 if q % 3 == 0 else ir.NEVER for q in range(k))
    head = dataclasses.replace(program.modules[0], predicate=predicate)
    program = dataclasses.replace(program, modules=(head, *program.modules[1:]))
    source, _ = program_to_python(program)
    assert "    if q_position in {3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39}:\n" in source
    assert "        return k_position == q_position - 1\n    else:\n        return False\n" in (
        source
    )
    _, module = generate(program, tmp_path)
    inputs = [["<s>", "a", "1", "b", "2", "a"], ["<s>", *"ab12" * 5]]
    assert [module.run(tokens) for tokens in inputs] == run_program(program, inputs)


def test_the_induction_circuit_reads_as_the_paper_states_it() -> None:
    """Layer 0 copies the previous token; layer 1 matches the current letter with it."""
    vocab = ("<pad>", "<s>", "a", "b", "1", "2")
    source, _ = program_to_python(induction_program(vocab, ("<pad>", "1", "2", "<unk>"), 6))
    assert (
        "def predicate_1_0(q_token, k_attn_0_0):\n"
        '    """The predicate of attn_1_0."""\n'
        "    return q_token in {'a', 'b'} and k_attn_0_0 == q_token\n"
    ) in source
