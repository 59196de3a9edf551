"""The RASP tasks of the paper (§4.2, Table 1): reverse, sort, hist, double_hist, most_freq, dyck.

Conventions (TASKS.md): ``data.max_length`` N is the longest input *including* specials (it is the
model context), ``data.vocab_size`` V counts ``<pad>`` and the specials, ``data.min_length`` is the
shortest content. Each task keeps its target rule in a pure function over the content (the tokens
between the specials) so that worked examples can be checked without an RNG; the generators only
sample content and wrap it with specials and ``<pad>`` targets. Each task also declares its input
domain (`tprog.tasks.domain.FramedStrings`): every input its generator can produce, with the same
targets, for whole-domain verification.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from tprog.config import DataConfig
from tprog.errors import ConfigError
from tprog.tasks.domain import FramedStrings
from tprog.tasks.registry import Example, Generator, register_task
from tprog.vocab import BOS, EOS

# Dyck labels: valid Prefix (not yet balanced), balanced so far (True), violated (False).
PREFIX, BALANCED, FAILED = "P", "T", "F"
DYCK_LABELS = (PREFIX, BALANCED, FAILED)
BRACKET_PAIRS = {"(": ")", "{": "}"}

ContentFn = Callable[[Sequence[str]], list[str]]


# --------------------------------------------------------------------------- target rules


def reverse_targets(content: Sequence[str]) -> list[str]:
    return list(reversed(content))


def sort_targets(content: Sequence[str]) -> list[str]:
    # Numeric order: symbols are decimal strings, and at V > 13 "10" must sort after "9".
    return sorted(content, key=_symbol_key)


def hist_targets(content: Sequence[str]) -> list[str]:
    counts = Counter(content)
    return [str(counts[token]) for token in content]


def double_hist_targets(content: Sequence[str]) -> list[str]:
    counts = Counter(content)
    tokens_per_count = Counter(counts.values())  # count -> number of distinct tokens with it
    return [str(tokens_per_count[counts[token]]) for token in content]


def most_freq_targets(content: Sequence[str]) -> list[str]:
    counts = Counter(content)
    first_seen = {token: content.index(token) for token in counts}
    ranked = sorted(counts, key=lambda token: (-counts[token], first_seen[token]))
    # Quirk of the paper protocol: the tail is filled with "<s>", a real (scored) label.
    return ranked + [BOS] * (len(content) - len(ranked))


def dyck_targets(content: Sequence[str]) -> list[str]:
    """Per bracket: P (valid prefix, unbalanced), T (balanced so far), F (first violation on)."""
    closers = {close: open_ for open_, close in BRACKET_PAIRS.items()}
    stack: list[str] = []
    failed = False
    out: list[str] = []
    for bracket in content:
        if not failed:
            if bracket in BRACKET_PAIRS:
                stack.append(bracket)
            elif stack and stack[-1] == closers.get(bracket):
                stack.pop()
            else:
                failed = True
        out.append(FAILED if failed else PREFIX if stack else BALANCED)
    return out


def _symbol_key(token: str) -> tuple[int, str]:
    return (int(token), token) if token.isdigit() else (-1, token)


# --------------------------------------------------------------------------- sampling


@lru_cache(maxsize=64)
def symbols(count: int) -> tuple[str, ...]:
    """The ``count`` content symbols "0", "1", ...; cached because generators run ~100k times."""
    return tuple(str(i) for i in range(count))


def _check_symbols(task: str, count: int) -> None:
    if count < 1:
        raise ConfigError(f"task {task!r} needs a larger data.vocab_size: it leaves no symbols.")


@lru_cache(maxsize=64)
def _framed_content(
    name: str, rule: ContentFn, data: DataConfig, suffix: tuple[str, ...]
) -> FramedStrings:
    """``<s> x`` + ``suffix``, ``x`` of ``data.min_length`` up to as many tokens as fit, over
    V - 2 - len(suffix) symbols: the inputs of a content task, with their targets. Cached
    because every one of the ~100k draws of a dataset asks for it."""
    n_symbols = data.vocab_size - 2 - len(suffix)
    max_content = data.max_length - 1 - len(suffix)
    _check_symbols(name, n_symbols)
    if data.min_length > max_content:
        raise ConfigError(
            f"task {name!r} fits at most {max_content} content tokens in data.max_length="
            f"{data.max_length}, fewer than data.min_length={data.min_length}."
        )
    lengths = range(data.min_length, max_content + 1)
    return FramedStrings(symbols(n_symbols), lengths, rule, prefix=(BOS,), suffix=suffix)


def _content_task(
    name: str, rule: ContentFn, suffix: tuple[str, ...]
) -> tuple[Generator, Callable[[DataConfig], FramedStrings]]:
    """``(generator, domain factory)`` of a content task, both built on `_framed_content` so
    that the inputs drawn for training and those verified can never drift apart."""

    def domain(data: DataConfig) -> FramedStrings:
        return _framed_content(name, rule, data, suffix)

    def generate(rng: np.random.Generator, data: DataConfig) -> Example:
        # The paper's training distribution: a uniform length, then uniform symbols (unlike
        # `FramedStrings.sample`, which is uniform over strings and so favours long ones).
        inputs = domain(data)
        length = int(rng.integers(inputs.lengths.start, inputs.lengths.stop))
        content = [inputs.symbols[i] for i in rng.integers(0, len(inputs.symbols), size=length)]
        return inputs.frame(content), inputs.framed_targets(content)

    return generate, domain


def dyck_alphabet(n_pairs: int) -> list[str]:
    """``( )`` for Dyck-1, ``( ) { }`` for Dyck-2."""
    return [b for open_ in list(BRACKET_PAIRS)[:n_pairs] for b in (open_, BRACKET_PAIRS[open_])]


def sample_dyck(rng: np.random.Generator, n_pairs: int, n_brackets: int) -> list[str]:
    """TASKS.md's recipe: with probability 1/2, ``n_brackets`` uniform brackets; otherwise a
    balanced string (see `_balanced_dyck`) truncated to ``n_brackets``."""
    opens = list(BRACKET_PAIRS)[:n_pairs]
    alphabet = dyck_alphabet(n_pairs)
    if rng.random() < 0.5:
        return [alphabet[i] for i in rng.integers(0, len(alphabet), size=n_brackets)]
    return _balanced_dyck(rng, opens, n_brackets)


def _balanced_dyck(rng: np.random.Generator, opens: list[str], n_brackets: int) -> list[str]:
    # N/2 steps with N = n_brackets + 1 (the context length): each step appends a random pair or
    # wraps everything so far in one. At N = 16 that is 16 brackets, truncated to 15.
    steps = (n_brackets + 1) // 2
    wrap = rng.random(steps) < 0.5
    kinds = rng.integers(0, len(opens), size=steps)
    out: list[str] = []
    for wrap_step, kind in zip(wrap, kinds, strict=True):
        open_ = opens[kind]
        pair_close = BRACKET_PAIRS[open_]
        out = [open_, *out, pair_close] if wrap_step else [*out, open_, pair_close]
    # 2 * (N // 2) >= N - 1 brackets, so the recipe's "pad with uniform brackets" never applies
    # when the step count follows the context length; even N loses the last (closing) bracket.
    return out[:n_brackets]


def _dyck_task(n_pairs: int) -> tuple[Generator, Callable[[DataConfig], FramedStrings]]:
    """``(generator, domain factory)`` of Dyck-``n_pairs``; the generator draws from TASKS.md's
    recipe, the domain is every bracket string of the fixed length."""

    def domain(data: DataConfig) -> FramedStrings:
        # Fixed length: N - 1 brackets after <s>; vocab_size and min_length do not apply.
        return _dyck_strings(n_pairs, data.max_length - 1)

    def generate(rng: np.random.Generator, data: DataConfig) -> Example:
        content = sample_dyck(rng, n_pairs, data.max_length - 1)
        inputs = domain(data)
        return inputs.frame(content), inputs.framed_targets(content)

    return generate, domain


@lru_cache(maxsize=64)
def _dyck_strings(n_pairs: int, n_brackets: int) -> FramedStrings:
    lengths = range(n_brackets, n_brackets + 1)
    return FramedStrings(tuple(dyck_alphabet(n_pairs)), lengths, dyck_targets, prefix=(BOS,))


# --------------------------------------------------------------------------- registration


def _paper_model(layers: int, heads: int, mlps: int, **data: int) -> dict[str, Any]:
    """Table 1's L/H/M as dotted keys; H and M are split evenly categorical/numerical."""
    model = {
        "model.n_layers": layers,
        "model.n_heads_cat": heads // 2,
        "model.n_heads_num": heads - heads // 2,
        "model.n_mlps_cat": mlps // 2,
        "model.n_mlps_num": mlps - mlps // 2,
    }
    return model | {f"data.{key}": value for key, value in data.items()}


_RASP_DATA = {"max_length": 8, "vocab_size": 8, "size": 20_000}


def _bracketed_inputs(data: DataConfig) -> list[str]:
    return [BOS, EOS, *symbols(max(data.vocab_size - 3, 0))]


def _bracketed_labels(data: DataConfig) -> list[str]:
    return list(symbols(max(data.vocab_size - 3, 0)))


def _prefixed_inputs(data: DataConfig) -> list[str]:
    return [BOS, *symbols(max(data.vocab_size - 2, 0))]


def _hist_labels(data: DataConfig) -> list[str]:
    return [str(count) for count in range(1, data.max_length)]


def _double_hist_labels(data: DataConfig) -> list[str]:
    # All tokens distinct is the most tokens that can share one count.
    most = min(data.vocab_size - 2, data.max_length - 1)
    return [str(n) for n in range(1, most + 1)]


def _most_freq_labels(data: DataConfig) -> list[str]:
    return [BOS, *symbols(max(data.vocab_size - 2, 0))]


_BRACKETED, _PREFIXED = (EOS,), ()  # content suffix: <s> x </s> (V-3 symbols) or <s> x (V-2)

_CONTENT_TASKS: tuple[tuple[Any, ...], ...] = (
    # name, target rule, suffix, input tokens, labels, Table 1 (L, H, M), summary
    ("reverse", reverse_targets, _BRACKETED, _bracketed_inputs, _bracketed_labels,
     (3, 8, 2), "reverse the tokens between <s> and </s>"),
    ("sort", sort_targets, _BRACKETED, _bracketed_inputs, _bracketed_labels,
     (3, 8, 4), "sort the tokens between <s> and </s> (numeric order)"),
    ("hist", hist_targets, _PREFIXED, _prefixed_inputs, _hist_labels,
     (1, 4, 2), "for each token, how often it occurs in the sequence"),
    ("double_hist", double_hist_targets, _PREFIXED, _prefixed_inputs, _double_hist_labels,
     (3, 4, 2), "for each token, how many distinct tokens share its count"),
    ("most_freq", most_freq_targets, _PREFIXED, _prefixed_inputs, _most_freq_labels,
     (3, 8, 4), "distinct tokens by frequency (ties: first occurrence), then <s> fillers"),
)  # fmt: skip


def _register() -> None:
    for name, rule, suffix, inputs, labels, (layers, heads, mlps), summary in _CONTENT_TASKS:
        generate, domain = _content_task(name, rule, suffix)
        register_task(
            name,
            generate,
            input_tokens=inputs,
            labels=labels,
            defaults=_paper_model(layers, heads, mlps, **_RASP_DATA),
            summary=summary,
            domain=domain,
        )
    for name, n_pairs, (layers, heads, mlps) in (("dyck1", 1, (3, 8, 2)), ("dyck2", 2, (3, 4, 4))):
        generate, domain = _dyck_task(n_pairs)
        register_task(
            name,
            generate,
            input_tokens=[BOS, *dyck_alphabet(n_pairs)],
            labels=list(DYCK_LABELS),
            causal=True,
            defaults=_paper_model(layers, heads, mlps, max_length=16),
            summary=f"Dyck-{n_pairs}: is each prefix balanced (T), a valid prefix (P), or not (F)",
            domain=domain,
        )


_register()
