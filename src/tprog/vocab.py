"""Token <-> id maps and the one place where raw inputs are checked and encoded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tprog.errors import InputError

PAD = "<pad>"
BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


@dataclass(frozen=True)
class Vocab:
    """An ordered list of distinct tokens; ``<pad>`` is always id 0."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.tokens or self.tokens[0] != PAD:
            raise ValueError("a vocabulary must start with <pad>")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary entries must be distinct")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def build(cls, tokens: Sequence[str]) -> Vocab:
        """``<pad>`` first, then ``tokens`` in the given order (duplicates and pad dropped)."""
        ordered = [PAD]
        for token in tokens:
            if token not in ordered:
                ordered.append(token)
        return cls(tuple(ordered))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index  # type: ignore[attr-defined]

    def id(self, token: str) -> int:
        return self._index[token]  # type: ignore[attr-defined]

    @property
    def unk(self) -> str | None:
        return UNK if UNK in self else None


def encode_batch(
    sequences: Sequence[Sequence[str]], vocab: Sequence[str], n_ctx: int, unk: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Encode token sequences as ``ids [B, n] int64`` (right-padded with 0) and ``lengths [B]``.

    Rejects, with a sentence naming the problem, inputs longer than ``n_ctx``, empty inputs,
    ``<pad>`` inside an input, and tokens outside the vocabulary (unless ``unk`` is given).
    """
    index = {t: i for i, t in enumerate(vocab)}
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    # One dictionary lookup per token, then whole-array work: assigning token by token into a
    # numpy array cost more than the interpreter's whole run on the same inputs.
    flat = np.fromiter(
        (index.get(token, -1) for sequence in sequences for token in sequence), dtype=np.int64
    )
    bad_length = np.flatnonzero((lengths == 0) | (lengths > n_ctx))
    bad_token = np.flatnonzero(flat == 0) if unk is not None else np.flatnonzero(flat <= 0)
    if len(bad_length) or len(bad_token):
        _raise_first_problem(sequences, lengths, bad_length, bad_token, vocab, n_ctx)
    if unk is not None:
        flat[flat < 0] = index[unk]
    width = max(int(lengths.max(initial=1)), 1)
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    ids[np.arange(width)[None, :] < lengths[:, None]] = flat  # row by row, as flat was made
    return ids, lengths


def _raise_first_problem(sequences, lengths, bad_length, bad_token, vocab, n_ctx) -> None:
    """InputError for the first problem in reading order: an input's length comes before its
    tokens."""
    starts = np.concatenate([[0], np.cumsum(lengths)])
    token_row = (
        int(np.searchsorted(starts, bad_token[0], side="right") - 1) if len(bad_token) else None
    )
    length_row = int(bad_length[0]) if len(bad_length) else None
    if token_row is None or (length_row is not None and length_row <= token_row):
        if lengths[length_row] == 0:
            raise InputError("the input is empty: give at least one token.")
        raise InputError(
            f"the input has {lengths[length_row]} tokens but the model's context holds {n_ctx}."
        )
    col = int(bad_token[0] - starts[token_row])
    token = sequences[token_row][col]
    if token in vocab:  # known, so it is padding
        raise InputError(f"{PAD!r} (position {col}) is padding, not an input token.")
    known = ", ".join(repr(t) for t in vocab[1:])
    raise InputError(f"token {token!r} (position {col}) is not in the vocabulary: {known}.")
