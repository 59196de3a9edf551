"""The data protocol: de-duplication, split sizes, determinism, encoding, generator checks."""

from __future__ import annotations

import numpy as np
import pytest

from tprog.config import DataConfig, RunConfig, build_config
from tprog.data import (
    balanced_by_length,
    build_dataset,
    draw_examples,
    encode_split,
    split_sizes,
)
from tprog.errors import ConfigError, InputError
from tprog.tasks import get_task, register_task
from tprog.vocab import PAD, Vocab, encode_batch


def paper_config(name: str, **overrides: object) -> RunConfig:
    return build_config(name, [dict(get_task(name).defaults), overrides])


def test_hist_protocol_split_sizes() -> None:
    dataset = build_dataset(get_task("hist"), paper_config("hist"))
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (16200, 1800, 2000)


def test_reverse_has_fewer_distinct_strings() -> None:
    dataset = build_dataset(get_task("reverse"), paper_config("reverse"))
    n = len(dataset.train) + len(dataset.val) + len(dataset.test)
    # 100k draws over 19,530 possible strings (5 symbols, lengths 1..6) find ~14.1k of them.
    assert 14_000 <= n <= 14_300
    n_test = round(0.1 * n)
    n_val = round(0.1 * (n - n_test))
    assert (len(dataset.val), len(dataset.test)) == (n_val, n_test)
    all_inputs = dataset.train.inputs + dataset.val.inputs + dataset.test.inputs
    assert len({tuple(x) for x in all_inputs}) == n


def test_split_sizes_formula() -> None:
    assert split_sizes("t", 20_000) == (16_200, 1_800, 2_000)
    assert split_sizes("t", 1_000) == (810, 90, 100)
    assert split_sizes("t", 3) == (1, 1, 1)  # tiny sizes still give three non-empty splits
    with pytest.raises(ConfigError, match="'t'"):
        split_sizes("t", 2)


def test_dataset_is_deterministic_and_seeded() -> None:
    config = paper_config("most_freq", **{"data.size": 300})
    first, second = (build_dataset(get_task("most_freq"), config) for _ in range(2))
    for a, b in [(first.train, second.train), (first.val, second.val), (first.test, second.test)]:
        assert a.inputs == b.inputs and a.targets == b.targets
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.target_ids, b.target_ids)
    other = build_dataset(get_task("most_freq"), config.model_copy(update={"seed": 1}))
    assert other.train.inputs != first.train.inputs


def test_splits_are_disjoint_and_distinct() -> None:
    dataset = build_dataset(get_task("dyck2"), paper_config("dyck2", **{"data.size": 500}))
    parts = [{tuple(x) for x in s.inputs} for s in (dataset.train, dataset.val, dataset.test)]
    assert sum(map(len, parts)) == 500 == len(set.union(*parts))


def test_balance_lengths_repeats_short_training_inputs_only() -> None:
    plain = build_dataset(get_task("reverse"), paper_config("reverse"))
    balanced = build_dataset(
        get_task("reverse"), paper_config("reverse", **{"data.balance_lengths": True})
    )
    # val and test are the protocol's draws either way
    assert balanced.val.inputs == plain.val.inputs and balanced.test.inputs == plain.test.inputs
    before = np.bincount(plain.train.lengths)
    after = np.bincount(balanced.train.lengths)
    assert set(map(tuple, balanced.train.inputs)) == set(map(tuple, plain.train.inputs))
    assert (after >= before).all() and after[before.argmax()] == before.max()
    # Lengths rarer than the mean over the six present are raised to about that mean (as near
    # as whole repeats get); commoner ones keep what they had.
    mean = len(plain.train) / np.count_nonzero(before)
    rare = (before > 0) & (before < mean)
    assert np.count_nonzero(before) == 6 and rare.sum() == 4
    assert (abs(after[rare] - mean) <= before[rare] / 2).all(), after
    assert (after[~rare] == before[~rare]).all()
    assert before[before > 0].min() < 10  # the scarcity it targets: 2 one-symbol inputs


def test_balanced_by_length_on_a_hand_built_list() -> None:
    examples = [(["a"], ["x"]), (["b"], ["y"])] + [(["a", "b"], ["x", "y"])] * 6
    out = balanced_by_length(examples)
    # two lengths, mean 4 per length: each one-token input 2x, the two-token ones as they were
    assert out == [examples[0]] * 2 + [examples[1]] * 2 + examples[2:]


def test_encoding() -> None:
    dataset = build_dataset(get_task("sort"), paper_config("sort", **{"data.size": 200}))
    assert dataset.n_ctx == 8 and dataset.vocab.tokens[0] == PAD == dataset.labels.tokens[0]
    split = dataset.train
    assert split.ids.shape == split.target_ids.shape == (len(split), 8)
    assert split.ids.dtype == split.target_ids.dtype == split.lengths.dtype == np.int64
    for row, (inputs, targets) in enumerate(zip(split.inputs, split.targets, strict=True)):
        n = len(inputs)
        assert split.lengths[row] == n
        assert [dataset.vocab.tokens[i] for i in split.ids[row, :n]] == inputs
        assert [dataset.labels.tokens[i] for i in split.target_ids[row, :n]] == targets
        assert not split.ids[row, n:].any() and not split.target_ids[row, n:].any()
        # <pad> targets (at <s> and </s>) encode as label 0
        assert split.target_ids[row, 0] == 0 == split.target_ids[row, n - 1]


def test_encode_split_empty() -> None:
    split = encode_split([], Vocab.build(["a"]), Vocab.build(["x"]), 5)
    assert split.ids.shape == (0, 5) and len(split) == 0


# --------------------------------------------------------------------------- user generators


def _register(name: str, generate, tokens=("<s>", "a", "b"), labels=("x", "y")) -> None:
    register_task(name, generate, input_tokens=list(tokens), labels=list(labels), replace=True)


def test_dedup_keeps_first_occurrence_and_stops_at_size() -> None:
    calls = []

    def generate(rng: np.random.Generator, data: DataConfig):
        calls.append(1)
        inputs = [["<s>", "a"], ["<s>", "a"], ["<s>", "b"], ["<s>", "a", "b"], ["<s>", "b", "a"]]
        label = "x" if len(calls) == 1 else "y"  # the repeated input comes back with another label
        return inputs[len(calls) - 1], [PAD, *[label] * (len(inputs[len(calls) - 1]) - 1)]

    _register("test_data_dedup_first", generate)
    task = get_task("test_data_dedup_first")
    examples = draw_examples(task, DataConfig(size=3), np.random.default_rng(0))
    assert examples == [
        (["<s>", "a"], [PAD, "x"]),
        (["<s>", "b"], [PAD, "y"]),
        (["<s>", "a", "b"], [PAD, "y", "y"]),
    ]
    assert len(calls) == 4  # stopped as soon as three distinct inputs were kept


def test_dedup_gives_up_after_five_draws_per_example() -> None:
    calls = []

    def generate(rng: np.random.Generator, data: DataConfig):
        calls.append(1)
        return ["<s>", str(rng.choice(["a", "b"]))], [PAD, "x"]

    _register("test_data_dedup_cap", generate)
    config = RunConfig(task="test_data_dedup_cap", data=DataConfig(size=10))
    examples = draw_examples(get_task("test_data_dedup_cap"), config.data, np.random.default_rng(0))
    assert sorted(x for x, _ in examples) == [["<s>", "a"], ["<s>", "b"]]
    assert len(calls) == 50
    with pytest.raises(ConfigError, match="only 2 distinct"):
        build_dataset(get_task("test_data_dedup_cap"), config)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ((["<s>", "a"], [PAD]), "2 input tokens but 1 targets"),
        (([], []), "empty input"),
        ((["<s>", "a", "b", "a", "b"], [PAD] * 5), "longer than data.max_length=4"),
        ((["<s>", "c"], [PAD, "x"]), "input token 'c'"),
        ((["<s>", PAD], [PAD, "x"]), "input token '<pad>'"),
        ((["<s>", "a"], [PAD, "z"]), "target 'z'"),
        ((["<s>", "a"],), "pair"),
        (None, "pair"),
    ],
)
def test_broken_user_generator(returned, message: str) -> None:
    _register("test_data_broken", lambda rng, data: returned)
    config = RunConfig(task="test_data_broken", data=DataConfig(size=5, max_length=4))
    with pytest.raises(ConfigError, match=message) as info:
        build_dataset(get_task("test_data_broken"), config)
    text = str(info.value)
    assert "'test_data_broken'" in text and text.endswith(".")


def test_encoding_names_the_first_problem_in_reading_order() -> None:
    vocab, n_ctx = ("<pad>", "<s>", "a"), 3

    def problem(sequences, unk=None) -> str:
        with pytest.raises(InputError) as caught:
            encode_batch(sequences, vocab, n_ctx, unk)
        return str(caught.value)

    assert "'b' (position 1) is not in the vocabulary" in problem([["<s>"], ["<s>", "b"], []])
    assert problem([[], ["<s>", "b"]]) == "the input is empty: give at least one token."
    # an input's length is checked before its tokens
    assert "has 4 tokens" in problem([["<s>", "b", "a", "a"]])
    assert "'<pad>' (position 2) is padding" in problem([["<s>", "a", "<pad>"]], unk="a")
    ids, lengths = encode_batch([["<s>", "zz"], ["a"]], vocab, n_ctx, unk="a")
    assert ids.tolist() == [[1, 2], [2, 0]] and lengths.tolist() == [2, 1]
