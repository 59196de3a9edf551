"""Whole-domain verification: task input domains, `verify_program`, and ``tprog verify``."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from itertools import product
from math import comb
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.test_cli import tprog
from tprog import decompile, ir
from tprog.cli import cli
from tprog.config import DataConfig
from tprog.data import build_dataset
from tprog.errors import RunDirError
from tprog.interpret import run_program
from tprog.pipeline import verify_dir
from tprog.rundir import load_run
from tprog.tasks import get_task, register_task, task_config
from tprog.tasks.domain import FramedStrings
from tprog.tasks.induction import LETTERS, NUMBERS
from tprog.verify import verify_program
from tprog.vocab import BOS, PAD, encode_batch

RASP = ["reverse", "sort", "hist", "double_hist", "most_freq", "dyck1", "dyck2"]
TINY_DATA = {
    "reverse": DataConfig(max_length=5, vocab_size=5),  # 2 symbols, content 1..3
    "sort": DataConfig(min_length=2, max_length=6, vocab_size=6),  # 3 symbols, content 2..4
    "hist": DataConfig(max_length=4, vocab_size=5),  # 3 symbols, content 1..3
    "double_hist": DataConfig(max_length=5, vocab_size=4),
    "most_freq": DataConfig(min_length=3, max_length=5, vocab_size=5),
    "dyck1": DataConfig(max_length=6),  # 5 brackets
    "dyck2": DataConfig(max_length=4),  # 3 brackets
}


def enumerated(name: str, data: DataConfig) -> list[tuple[str, ...]]:
    domain = get_task(name).input_domain(data)
    return [tuple(tokens) for chunk in domain.chunks(7) for tokens in chunk]  # odd chunk size


def in_token_order(inputs: list[tuple[str, ...]], vocab: list[str]) -> bool:
    keys = [(len(tokens), [vocab.index(t) for t in tokens]) for tokens in inputs]
    return keys == sorted(keys)


# --------------------------------------------------------------------------- domains


@pytest.mark.parametrize("name", RASP)
def test_domain_is_exactly_what_the_generator_draws(name: str) -> None:
    # The tiny domains hold at most 120 inputs, so 3000 draws reach every one of them.
    task, data = get_task(name), TINY_DATA[name]
    rng = np.random.default_rng(0)
    drawn = {tuple(task.generate(rng, data)[0]) for _ in range(3000)}
    inputs = enumerated(name, data)
    assert len(inputs) == len(set(inputs)) == task.input_domain(data).size()
    assert set(inputs) == drawn
    assert in_token_order(inputs, task.vocab_tokens(data))


def test_domain_sizes_at_the_paper_configs() -> None:
    sizes = {name: get_task(name).input_domain(task_config(name).data).size() for name in RASP}
    assert sizes["sort"] == sizes["reverse"] == sum(5**n for n in range(1, 7)) == 19_530
    assert sizes["hist"] == sizes["most_freq"] == sum(6**n for n in range(1, 8))
    assert (sizes["dyck1"], sizes["dyck2"]) == (2**15, 4**15)


def test_induction_domain_is_every_outcome_of_the_generators_choices() -> None:
    # Brute force over the generator's random choices: every map, run of letters, and final
    # query letter or stray number after <s>.
    outcomes = set()
    for mapping in product(NUMBERS, repeat=len(LETTERS)):
        number = dict(zip(LETTERS, mapping, strict=True))
        for run in product(LETTERS, repeat=4):
            pairs = [token for letter in run for token in (letter, number[letter])]
            outcomes |= {(BOS, *pairs, query) for query in LETTERS}
            outcomes |= {(BOS, stray, *pairs) for stray in NUMBERS}
    task, data = get_task("induction"), task_config("induction").data
    inputs = enumerated("induction", data)
    assert len(inputs) == task.input_domain(data).size() == len(outcomes) == 133_760
    assert set(inputs) == outcomes
    assert in_token_order(inputs, task.vocab_tokens(data))


@pytest.mark.parametrize("name", [*RASP, "induction"])
def test_domain_targets_equal_the_generators(name: str) -> None:
    task, data = get_task(name), task_config(name).data
    domain, rng = task.input_domain(data), np.random.default_rng(1)
    for _ in range(300):
        inputs, targets = task.generate(rng, data)
        assert domain.targets(inputs) == targets


def test_uniform_sample_covers_the_domain_evenly() -> None:
    domain = FramedStrings(("a", "b", "c"), range(1, 3), list, prefix=(BOS,))  # 3 + 9 strings
    counts = Counter(tuple(x) for x in domain.sample(np.random.default_rng(0), 12_000))
    assert set(counts) == {tuple(x) for chunk in domain.chunks(100) for x in chunk}
    assert all(850 < count < 1150 for count in counts.values())  # 1000 expected, sd ~30


def test_skewed_samples_stay_in_the_domain_and_hold_extreme_compositions() -> None:
    domain = get_task("dyck2").input_domain(task_config("dyck2").data)
    rng = np.random.default_rng(0)
    skewed, uniform = domain.sample_skewed(rng, 4000), domain.sample(rng, 4000)
    assert all(len(row) == 16 and row[0] == BOS for row in skewed)  # 15 brackets after <s>
    assert {token for row in skewed for token in row[1:]} == set(domain.symbols)

    def one_sided(rows) -> int:  # inputs at least 13 of whose 15 brackets are one symbol
        return sum(max(Counter(row[1:]).values()) >= 13 for row in rows)

    assert one_sided(uniform) == 0  # about 1 input in 300,000
    assert one_sided(skewed) > 100


def test_induction_sample_stays_in_the_domain() -> None:
    domain = get_task("induction").input_domain(task_config("induction").data)
    everything = {tuple(x) for chunk in domain.chunks(50_000) for x in chunk}
    sample = domain.sample(np.random.default_rng(0), 2000)
    assert {tuple(x) for x in sample} <= everything
    assert 0.4 < sum(x[1] in LETTERS for x in sample) / len(sample) < 0.6


# --------------------------------------------------------------------------- verify_program

COPY_SYMBOLS = ("a", "b")
VOCAB = ("<pad>", BOS, *COPY_SYMBOLS)
LABELS = ("<pad>", *COPY_SYMBOLS)


def _copy(rng: np.random.Generator, data: DataConfig) -> tuple[list[str], list[str]]:
    content = [COPY_SYMBOLS[i] for i in rng.integers(0, 2, size=int(rng.integers(1, 4)))]
    return [BOS, *content], [PAD, *content]


COPY = register_task(
    "verify_copy",
    _copy,
    input_tokens=[BOS, *COPY_SYMBOLS],
    labels=list(COPY_SYMBOLS),
    replace=True,
    domain=lambda data: FramedStrings(COPY_SYMBOLS, range(1, 4), list, prefix=(BOS,)),
)
COPY_DATA = DataConfig(max_length=4, vocab_size=4)
SHORTEST_WITH_B = ["b", "a b", "b a", "b b", "a a b", "a b a", "a b b", "b a a", "b a b", "b b a"]


def copy_program(wrong: dict[str, str] | None = None) -> ir.Program:
    """One head attends from each position to itself and copies its token; the classifier
    names the copied token's label, or ``wrong[token]`` instead."""
    wrong = wrong or {}
    label_of = {token: wrong.get(token, token) for token in COPY_SYMBOLS}
    copied = tuple(tuple(float(label_of.get(v) == lab) for lab in LABELS) for v in VOCAB)
    silent = tuple(tuple(0.0 for _ in LABELS) for _ in VOCAB)
    return ir.Program(
        task="verify_copy",
        vocab=VOCAB,
        n_ctx=4,
        d_var=4,
        causal=False,
        variables=(
            *ir.INPUT_VARIABLES,
            ir.Variable("attn_0_0", "categorical", "token"),
        ),
        modules=(ir.CatAttention("attn_0_0", "positions", "positions", "tokens", (0, 1, 2, 3)),),
        classifier=ir.Classifier(
            labels=LABELS,
            masked=(True, False, False),
            terms=("tokens", "positions", "ones", "attn_0_0"),
            categorical={"tokens": silent, "positions": silent, "attn_0_0": copied},
            numerical={"ones": (0.0, 0.0, 0.0)},
        ),
    )


def test_a_correct_program_is_right_on_the_whole_domain() -> None:
    report = verify_program(copy_program(), COPY, COPY_DATA)
    assert (report.mode, report.n_inputs, report.domain_size, report.seed) == (
        "whole domain",
        14,
        14,
        None,
    )
    assert report.token_accuracy == report.sequence_accuracy == 1.0
    assert report.n_wrong == 0 and report.counterexamples == ()


def test_a_broken_program_gets_its_shortest_counterexamples() -> None:
    report = verify_program(copy_program({"b": "a"}), COPY, COPY_DATA)
    assert report.n_wrong == 11  # every string holding a "b"
    assert report.sequence_accuracy == pytest.approx(3 / 14)
    assert report.token_accuracy == pytest.approx(0.5)  # "a" and "b" are equally common
    assert [" ".join(case.input[1:]) for case in report.counterexamples] == SHORTEST_WITH_B
    # <s> and 1, 2 or 3 symbols: 2, 4 and 8 inputs, all but the one without a "b" wrong.
    by_length = [(c.length, c.n_inputs, c.n_wrong) for c in report.by_length]
    assert by_length == [(2, 2, 1), (3, 4, 3), (4, 8, 7)]
    first = report.counterexamples[0]
    assert (first.input, first.expected, first.predicted) == ((BOS, "b"), (PAD, "b"), ("a", "a"))


def test_uniform_sampling_is_reported_and_finds_the_same_shortest_failures() -> None:
    report = verify_program(copy_program({"b": "a"}), COPY, COPY_DATA, max_inputs=13, sample=500)
    assert (report.mode, report.n_inputs, report.domain_size, report.seed) == (
        "uniform sample of 500",
        500,
        14,
        0,
    )
    assert [" ".join(case.input[1:]) for case in report.counterexamples] == SHORTEST_WITH_B
    assert 0 < report.sequence_accuracy < 0.4


def test_a_task_without_a_domain_falls_back_to_its_generator() -> None:
    task = register_task(
        "verify_copy_undeclared",
        _copy,
        input_tokens=[BOS, *COPY_SYMBOLS],
        labels=list(COPY_SYMBOLS),
        replace=True,
    )
    report = verify_program(copy_program(), task, COPY_DATA, sample=300, seed=3)
    assert (report.mode, report.n_inputs, report.domain_size, report.seed) == (
        "generator sample of 300",
        300,
        None,
        3,
    )
    assert report.sequence_accuracy == 1.0


def test_reference_programs_are_compared_on_every_input() -> None:
    right, wrong = copy_program(), copy_program({"b": "a"})
    # A dead module that nothing reads changes no prediction: agreement is exactly 1.0.
    dead = ir.NumAttention("dead", "tokens", "tokens", "ones", (0, 1, 2, 3))
    padded = replace(
        right,
        variables=(*right.variables, ir.Variable("dead", "numerical")),
        modules=(*right.modules, dead),
    )
    references = [("padded", padded), ("wrong", wrong)]
    report = verify_program(right, COPY, COPY_DATA, reference_programs=references)
    same, differs = report.references
    assert (same.name, same.agreement, same.first_disagreement) == ("padded", 1.0, None)
    assert differs.agreement == pytest.approx(3 / 14)
    assert differs.first_disagreement.input == (BOS, "b")
    assert differs.first_disagreement.reference == ("a", "a")


def test_the_sort_domain_is_verified_quickly_in_chunks() -> None:
    # 19,530 inputs through a program that is the identity on tokens: most are wrong (unsorted)
    # and the shortest wrong input is the first unsorted pair.
    data = task_config("sort").data
    task = get_task("sort")
    vocab = ("<pad>", *task.vocab_tokens(data))
    labels = ("<pad>", *task.label_tokens(data))
    program = _token_echo(vocab, labels, data.max_length)
    report = verify_program(program, task, data)
    assert report.n_inputs == 19_530 and report.mode == "whole domain"
    assert report.counterexamples[0].input == (BOS, "1", "0", "</s>")
    # Right exactly on the already sorted inputs: C(n + 4, 4) of length n over 5 symbols.
    assert report.n_inputs - report.n_wrong == sum(comb(n + 4, 4) for n in range(1, 7))


def _token_echo(vocab: tuple[str, ...], labels: tuple[str, ...], n_ctx: int) -> ir.Program:
    """No modules: each position's label is its own token (symbols), else the first label."""
    echo = tuple(tuple(float(token == label) for label in labels) for token in vocab)
    return ir.Program(
        task="sort",
        vocab=vocab,
        n_ctx=n_ctx,
        d_var=len(vocab),
        causal=False,
        variables=ir.INPUT_VARIABLES,
        modules=(),
        classifier=ir.Classifier(
            labels=labels,
            masked=tuple(label == "<pad>" for label in labels),
            terms=("tokens", "ones"),
            categorical={"tokens": echo},
            numerical={"ones": tuple(0.0 for _ in labels)},
        ),
    )


# --------------------------------------------------------------------------- the CLI

TINY_RUN = [
    *("data.size=200", "data.max_length=5", "data.vocab_size=5", "train.epochs=2"),
    *("model.d_mlp=8", "--quiet"),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "hist"
    trained = tprog("train", "hist", "--out", str(out), *TINY_RUN)
    assert trained.returncode == 0, trained.stderr
    return out


def test_verify_checks_the_whole_domain_and_writes_verify_json(run_dir: Path) -> None:
    result = tprog("verify", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "hist: whole domain, 120 of 120 inputs checked" in result.stdout  # 3+9+27+81
    report = json.loads((run_dir / "verify.json").read_text())
    assert report["n_inputs"] == report["domain_size"] == 120
    assert report["mode"] == "whole domain"
    # decompile wrote the unsimplified program: verify checks simplification changed nothing
    [unsimplified] = report["references"]
    assert unsimplified["name"] == "program_unsimplified.json"
    assert unsimplified["agreement"] == 1.0
    assert 0.0 <= report["token_accuracy"] <= 1.0
    # <s> and 1..4 symbols of 3: 3, 9, 27 and 81 inputs of 2..5 tokens
    by_length = [(c["length"], c["n_inputs"]) for c in report["by_length"]]
    assert by_length == [(2, 3), (3, 9), (4, 27), (5, 81)]
    assert sum(c["n_wrong"] for c in report["by_length"]) == report["n_wrong"]
    assert report["n_wrong"] > 0  # two epochs of training (seeded) are not enough for hist
    counts = ", ".join(
        f"{c['length']}: {c['n_wrong']}/{c['n_inputs']}" for c in report["by_length"]
    )
    assert f"wrong inputs by input length (tokens): {counts}" in result.stdout
    # Under each counterexample a row marks its wrong labels, each under its column.
    lines = result.stdout.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("  input "))
    first = report["counterexamples"][0]  # printed first
    rows = [first["input"], first["expected"], first["predicted"]]
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    starts = [len("  wrong     ") + sum(widths[:i]) + i for i in range(len(widths))]
    wrong = [
        starts[i]
        for i, (want, got) in enumerate(zip(first["expected"], first["predicted"], strict=True))
        if want != "<pad>" and got != want
    ]
    marks = lines[at + 3]
    assert marks.startswith("  wrong ") and wrong
    assert [i for i, char in enumerate(marks) if char == "^"] == wrong


def test_verify_samples_when_asked_for_fewer_inputs(run_dir: Path) -> None:
    report = verify_dir(run_dir, max_inputs=100, sample=50, seed=4)
    assert (report.mode, report.n_inputs, report.domain_size, report.seed) == (
        "uniform sample of 50",
        50,
        120,
        4,
    )
    assert json.loads((run_dir / "verify.json").read_text())["seed"] == 4


def copy_run(run_dir: Path, to: Path) -> Path:
    to.mkdir()
    for path in run_dir.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


def test_verify_compares_the_unsimplified_program(run_dir: Path, tmp_path: Path) -> None:
    copy = copy_run(run_dir, tmp_path / "run")
    (copy / "program_unsimplified.json").write_bytes((run_dir / "program.json").read_bytes())
    same = tprog("verify", str(copy))
    assert same.returncode == 0, same.stderr
    assert "program_unsimplified.json: equal to the program on every input" in same.stdout
    assert json.loads((copy / "verify.json").read_text())["references"][0]["agreement"] == 1.0

    program = ir.Program.from_json((run_dir / "program.json").read_text())
    (copy / "program_unsimplified.json").write_text(_other_answer(program).to_json())
    differs = tprog("verify", str(copy))
    assert differs.returncode == 2
    assert "differs from program_unsimplified.json on '<s> 0'" in differs.stderr
    assert json.loads((copy / "verify.json").read_text())["references"][0]["agreement"] < 1.0

    # Simplified on part of its domain, a program may differ elsewhere: reported, not an error.
    partial = replace(program, meta={**program.meta, "simplified_on_whole_domain": False})
    (copy / "program.json").write_text(partial.to_json())
    reported = tprog("verify", str(copy))
    assert reported.returncode == 0, reported.stderr
    assert json.loads((copy / "verify.json").read_text())["references"][0]["agreement"] < 1.0


def _other_answer(program: ir.Program) -> ir.Program:
    """``program`` with a classifier that always names a label ``program`` does not give
    for ``<s> 0``: the shortest input, so the first disagreement."""
    given = run_program(program, [[BOS, "0"]])[0][0]
    label = next(i for i, lab in enumerate(program.classifier.labels[1:], 1) if lab != given)
    bias = tuple(float(i == label) for i in range(len(program.classifier.labels)))
    clf = replace(program.classifier, terms=("ones",), categorical={}, numerical={"ones": bias})
    return replace(program, classifier=clf)


BAD_RUN_DIRS = [
    ("no program.json", "program.json is missing"),
    ("corrupt program.json", "not a valid tprog program"),
    ("no run.json", "not a tprog run directory"),
    ("corrupt config.json", "config.json is corrupt"),
]


@pytest.mark.parametrize(("damage", "message"), BAD_RUN_DIRS)
def test_verify_refuses_a_bad_run_dir(run_dir: Path, tmp_path: Path, damage, message) -> None:
    copy = copy_run(run_dir, tmp_path / "run")
    if damage.startswith("corrupt "):
        (copy / damage.removeprefix("corrupt ")).write_text("{")
    else:
        (copy / damage.removeprefix("no ")).unlink()
    with pytest.raises(RunDirError, match=message):
        verify_dir(copy)


def test_verify_answers_bad_input_with_one_sentence(tmp_path: Path) -> None:
    missing = tprog("verify", str(tmp_path / "missing"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    empty_sample = CliRunner().invoke(cli, ["verify", str(tmp_path), "--sample", "0"])
    assert empty_sample.exit_code == 2 and "--sample" in empty_sample.output


def test_a_domain_beyond_the_budget_is_sampled_into_the_simplification_basis(
    run_dir: Path, monkeypatch
) -> None:
    run = load_run(run_dir)
    program = ir.program_from_dict(json.loads((run_dir / "program_unsimplified.json").read_text()))
    dataset = build_dataset(run.task, run.config)
    whole = decompile.simplification_basis(run, program, dataset)
    assert whole.whole_domain and len(whole.ids) == 120

    monkeypatch.setattr(decompile, "SIMPLIFY_MAX_POSITIONS", 20 * program.n_ctx)
    basis = decompile.simplification_basis(run, program, dataset)
    splits = sum(len(getattr(dataset, name).ids) for name in decompile.SPLITS)
    assert not basis.whole_domain and basis.token_sets is not None
    assert len(basis.ids) == splits + 20
    assert basis.description.endswith(
        "and 10 drawn uniformly from the domain's 120 and 10 of skewed symbol frequencies"
    )
    rows = {tuple(row) for row in whole.ids.tolist()}  # every input, padded alike
    assert {tuple(row) for row in basis.ids[splits:].tolist()} <= rows
    # Not the sample `tprog verify` then checks the program on (its default seed, 0).
    verified = run.task.input_domain(run.config.data).sample(np.random.default_rng(0), 20)
    verified_ids, _ = encode_batch(verified, program.vocab, program.n_ctx, program.unk)
    assert not np.array_equal(basis.ids[splits:], verified_ids)
