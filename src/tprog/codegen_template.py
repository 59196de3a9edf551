"""The fixed part of every generated program module (see `tprog.codegen`)."""

# Where the program's own part ends and the runtime, the same in every program, begins.
RUNTIME_BANNER = "# --- The runtime: the same in every tprog program"

# The fixed part of every generated module; @NAME@ slots are filled in one pass (re.sub), so
# text placed in one slot is never searched for another.
TEMPLATE = '''@DOC@

import json
from pathlib import Path

# Vocabulary, labels and classifier weights live next to this file; read once, at import.
_WEIGHTS_FILE = Path(__file__).with_name(@WEIGHTS@)
_DATA = json.loads(_WEIGHTS_FILE.read_text(encoding="utf-8"))
VOCAB = tuple(_DATA["vocab"])
LABELS = tuple(_DATA["labels"])
MASKED = tuple(_DATA["masked"])
UNK = _DATA["unk"]
# The classifier adds its variables' weights in this order; TOKEN_VALUED hold tokens.
TERMS = tuple(_DATA["terms"])
TOKEN_VALUED = frozenset(_DATA["token_valued"])
N_CTX = @N_CTX@
D_VAR = @D_VAR@
CAUSAL = @CAUSAL@
_INDEX = {token: i for i, token in enumerate(VOCAB)}
# A categorical variable holds tokens (strings) or, if not, one of these integers.
INTEGERS = range(max(D_VAR, N_CTX))

# What was learned comes first: program(), the program itself, then the predicates and
# MLP tables it calls. The helpers it uses, and run/run_batch, follow them: the runtime,
# the same in every tprog program.


@PROGRAM@


@FUNCTIONS@# The classifier (classify, in the runtime) adds up one weight row per variable, the
# row of its value. The rows, and the order they are added in, are in the weights file.


# --- The runtime: the same in every tprog program ------------------------------------------------

# Results the helpers compute once and keep (they depend on nothing but their key).
_ORDERS = {}  # n -> preference_order(n)
_MATCHES = {}  # (predicate, queries are tokens, keys are tokens) -> match_table(...)

# The helpers take one input's variables as lists (run), or a batch's as numpy arrays
# [inputs, length] (run_batch); the numpy versions are at the end of this file.


def preference_order(n):
    """Per query position i of an n-token input, the key positions it may attend to (j <= i
    when CAUSAL), best first: the closest to i, any other position before i itself, and of
    two equally close positions the earlier one."""
    if n not in _ORDERS:
        _ORDERS[n] = [
            sorted(range(i + 1 if CAUSAL else n), key=lambda j, i=i: (j == i, abs(i - j), j))
            for i in range(n)
        ]
    return _ORDERS[n]


def match_table(predicate, queries, keys):
    """{query value: the set of key values it matches}, over every value queries and keys of
    these kinds can hold (tokens, or INTEGERS). Made once per predicate, so that attention
    looks matches up instead of calling predicate for every pair of positions."""
    kinds = (predicate, isinstance(queries[0], str), isinstance(keys[0], str))
    if kinds not in _MATCHES:
        query_values, key_values = (VOCAB if tokens else INTEGERS for tokens in kinds[1:])
        _MATCHES[kinds] = {
            query: frozenset(key for key in key_values if predicate(query, key))
            for query in query_values
        }
    return _MATCHES[kinds]


def select_closest(keys, queries, predicate):
    """Per query position i, the key position it attends to: the first position in its
    preference_order whose key matches (predicate(queries[i], keys[j])), or 0 (BOS) if none."""
    if not isinstance(keys, list):
        return _select_closest_batch(keys, queries, predicate)
    table = match_table(predicate, queries, keys)
    selected = []
    for query, order in zip(queries, preference_order(len(keys)), strict=True):
        wanted = table[query]
        for j in order:
            if keys[j] in wanted:
                selected.append(j)
                break
        else:  # no key matches
            selected.append(0)
    return selected


def select(keys, queries, predicate):
    """Per query position i, the key positions j it may attend to (j <= i when CAUSAL) whose
    key matches: predicate(queries[i], keys[j])."""
    if not isinstance(keys, list):
        return _select_batch(keys, queries, predicate)
    table = match_table(predicate, queries, keys)
    selection = []
    for i, query in enumerate(queries):
        wanted = table[query]
        allowed = keys[: i + 1] if CAUSAL else keys
        selection.append([j for j, key in enumerate(allowed) if key in wanted])
    return selection


def aggregate(selection, values):
    """The value at each query's selected position."""
    if not isinstance(values, list):
        return _aggregate_batch(selection, values)
    return [values[j] for j in selection]


def aggregate_sum(selection, values):
    """Per query, the sum of the values at all its selected positions."""
    if not isinstance(values, list):
        return _aggregate_sum_batch(selection, values)
    return [sum([values[j] for j in selected]) for selected in selection]


def apply(function, xs, ys):
    """function(x, y) at every position: an MLP, applied as the table it is."""
    if not isinstance(xs, list):
        return _apply_batch(function, xs, ys)
    return [function(x, y) for x, y in zip(xs, ys, strict=True)]


_CATEGORICAL = _DATA["categorical"]
_NUMERICAL = _DATA["numerical"]
# Per classifier variable, value -> the weights (one per label) it adds to the logits; a
# numerical variable's rows, weight * value, are added as its values are first seen.
_ROWS = {
    name: dict(zip(VOCAB if name in TOKEN_VALUED else INTEGERS, rows, strict=False))
    for name, rows in _CATEGORICAL.items()
}
_ROWS.update({name: {} for name in _NUMERICAL})


def classify(columns):
    """One label per position: each label's logit starts at 0.0 and adds, in TERMS order, the
    weight of every variable (float64, one addition at a time: the interpreter's exact
    rounding); masked labels never win and ties go to the lowest label index."""
    if not isinstance(columns["tokens"], list):
        return _classify_batch(columns)
    for name, weights in _NUMERICAL.items():
        for value in columns[name]:
            if value not in _ROWS[name]:
                _ROWS[name][value] = [weight * value for weight in weights]
    per_term = [[_ROWS[name][value] for value in columns[name]] for name in TERMS]
    labels = []
    for rows in zip(*per_term, strict=True):  # one position's weight rows, in TERMS order
        logits = []
        for label, masked in enumerate(MASKED):
            if masked:
                logits.append(float("-inf"))
                continue
            logit = 0.0
            for row in rows:  # not sum(): since Python 3.12 it compensates rounding errors
                logit += row[label]
            logits.append(logit)
        labels.append(LABELS[max(range(len(logits)), key=logits.__getitem__)])
    return labels


def check_input(tokens):
    """The tokens to run on (unknown ones become UNK), or ValueError naming the problem."""
    tokens = list(tokens)
    if 0 < len(tokens) <= N_CTX and all(_INDEX.get(token, 0) for token in tokens):
        return tokens  # all known, none padding (index 0): the usual case, checked quickly
    if not tokens:
        raise ValueError("the input is empty: give at least one token.")
    if len(tokens) > N_CTX:
        raise ValueError(
            f"the input has {len(tokens)} tokens but the model's context holds {N_CTX}."
        )
    checked = []
    for position, token in enumerate(tokens):
        index = _INDEX.get(token)
        if index is None and UNK is None:
            known = ", ".join(repr(t) for t in VOCAB[1:])
            raise ValueError(
                f"token {token!r} (position {position}) is not in the vocabulary: {known}."
            )
        if index == 0:
            raise ValueError(f"{VOCAB[0]!r} (position {position}) is padding, not an input token.")
        checked.append(UNK if index is None else token)
    return checked


def run(tokens):
    """One label per input token (a list of strings); ValueError for bad input."""
    tokens = check_input(tokens)
    n = len(tokens)
    return classify(program(tokens, list(range(n)), [1] * n))


def run_batch(inputs):
    """run() of every input, computed together with numpy (needed here only): the inputs of
    each length go through program() as arrays [inputs, length]. ValueError names the first
    bad input."""
    import numpy as np

    checked = []
    for number, tokens in enumerate(inputs):
        try:
            checked.append(check_input(tokens))
        except ValueError as error:
            raise ValueError(f"input {number}: {error}") from None
    by_length = {}
    for number, tokens in enumerate(checked):
        by_length.setdefault(len(tokens), []).append(number)
    outputs = [None] * len(checked)
    for n, numbers in by_length.items():
        step = max(1, _MOST_SELECTED // n**2)  # inputs at a time
        for start in range(0, len(numbers), step):
            chunk = numbers[start : start + step]
            # Tokens are stored as ~index (-1 - index): token and integer values never share
            # a number, and _decode tells them apart.
            tokens = np.array([[~_INDEX[t] for t in checked[k]] for k in chunk], dtype=np.int64)
            positions = np.broadcast_to(np.arange(n, dtype=np.int64), tokens.shape)
            ones = np.ones_like(tokens)
            labels = classify(program(tokens, positions, ones))
            for number, row in zip(chunk, labels, strict=True):
                outputs[number] = row
    return outputs


# The helpers on numpy arrays [inputs, length] (run_batch). Predicates and MLP functions are
# called once per distinct pair of values in the batch and looked up for every position.
_MOST_SELECTED = 2**22  # bounds the [inputs, n, n] selection arrays run_batch makes at once
_RANKS = {}  # n -> _ranks(n)
_WEIGHTS = {}  # classifier variable -> its weights as a numpy array


def _decode(number):
    """The value a batch array's integer stands for (tokens are ~index, see run_batch)."""
    return VOCAB[~number] if number < 0 else number


def _encode(value):
    """The integer standing for a value in a batch array (the inverse of _decode)."""
    return ~_INDEX[value] if isinstance(value, str) else value


def _span(column):
    """Every value from an array's smallest to its largest (decoded), and per position the
    index of its value among them."""
    low = int(column.min())
    return [_decode(number) for number in range(low, int(column.max()) + 1)], column - low


def _ranks(n):
    """[n, n]: rank[i, j] is key j's place in query i's preference_order; n if not in it."""
    import numpy as np

    if n not in _RANKS:
        _RANKS[n] = np.full((n, n), n, dtype=np.int64)
        for i, order in enumerate(preference_order(n)):
            _RANKS[n][i, order] = range(len(order))
    return _RANKS[n]


def _matches_batch(keys, queries, predicate):
    """[inputs, n, n]: whether key j matches query i, from match_table."""
    import numpy as np

    query_values, q = _span(queries)
    key_values, k = _span(keys)
    table = match_table(predicate, query_values, key_values)
    matches = np.array([[key in table[query] for key in key_values] for query in query_values])
    return np.take(matches, q[:, :, None] * len(key_values) + k[:, None, :])


def _select_closest_batch(keys, queries, predicate):
    import numpy as np

    n = keys.shape[-1]
    rank = np.where(_matches_batch(keys, queries, predicate), _ranks(n), n)
    return rank.argmin(-1)  # where nothing matches, every rank is n and argmin gives 0 (BOS)


def _select_batch(keys, queries, predicate):
    import numpy as np

    matches = _matches_batch(keys, queries, predicate)
    return matches & np.tri(keys.shape[-1], dtype=bool) if CAUSAL else matches  # j <= i


def _aggregate_batch(selection, values):
    import numpy as np

    return np.take_along_axis(values, selection, axis=-1)


def _aggregate_sum_batch(selection, values):
    import numpy as np

    return np.einsum("bij,bj->bi", selection, values)


def _apply_batch(function, xs, ys):
    """function(x, y) at every position, called once per distinct (x, y) pair."""
    import numpy as np

    x_values, x = _span(xs)
    y_values, y = _span(ys)
    width = len(y_values)
    pairs, index = np.unique(x * width + y, return_inverse=True)  # the (x, y) pairs present
    pairs = pairs.tolist()
    outputs = [_encode(function(x_values[p // width], y_values[p % width])) for p in pairs]
    return np.array(outputs, dtype=np.int64)[index.reshape(xs.shape)]


def _classify_batch(columns):
    """classify() on arrays: the same additions, in the same order, one term at a time."""
    import numpy as np

    if not _WEIGHTS:
        for name, rows in {**_CATEGORICAL, **_NUMERICAL}.items():
            _WEIGHTS[name] = np.array(rows, dtype=np.float64)
    logits = np.zeros((*columns["tokens"].shape, len(LABELS)), dtype=np.float64)
    for name in TERMS:
        column = columns[name]
        if name in _NUMERICAL:
            logits += _WEIGHTS[name] * column[..., None]
        else:
            logits += np.take(_WEIGHTS[name], ~column if name in TOKEN_VALUED else column, 0)
    logits[..., np.array(MASKED, dtype=bool)] = -np.inf
    return np.array(LABELS, dtype=object)[logits.argmax(-1)].tolist()
'''
