"""The runtime of every tprog program: the helpers its program() calls, and run/run_batch.

tprog writes this file, byte for byte the same, beside every program it generates, as
tprog_runtime.py. The program runs it by path (runpy, so it runs from any working directory,
and each program has its own copy of its state) and binds it to its own program() and data file
with `bind`. Standard library only (run_batch imports numpy); prints nothing. Read it once: it
is the same for every program.

The helpers take one input's variables as lists (run), or a batch's as numpy arrays
[inputs, length] (run_batch); the numpy versions are at the end of this file.
"""

import json
from bisect import bisect_right
from pathlib import Path

# Bounds the [inputs, n, n] selection arrays run_batch makes at once.
_MOST_SELECTED = 2**22
_ORDERS = {}  # (n, causal) -> preference_order(n, causal)
_RANKS = {}  # (n, causal) -> _ranks(n, causal)
# Bounds the labels run remembers, per tuple of the classifier's variable values.
_MOST_DECIDED = 2**16

# What bind() gives a program, in this order.
BOUND_NAMES = (
    "select_closest",
    "select",
    "aggregate",
    "aggregate_sum",
    "apply",
    "run",
    "run_batch",
)


def bind(program, program_file):
    """The names a program uses (BOUND_NAMES), bound to it. ``program(tokens, positions,
    ones)`` returns every variable by name; its file, ``program_file``, has beside it the JSON
    file of its vocabulary, labels, context size and classifier weights, named after it:
    ``program.py``'s is ``program_weights.json`` (rename the two together)."""
    program_file = Path(program_file)
    data_file = program_file.with_name(f"{program_file.stem}_weights.json")
    runtime = Runtime(program, json.loads(data_file.read_text(encoding="utf-8")))
    return tuple(getattr(runtime, name) for name in BOUND_NAMES)


def preference_order(n, causal):
    """Per query position i of an n-token input, the key positions it may attend to (j <= i
    when causal), best first: the closest to i, any other position before i itself, and of
    two equally close positions the earlier one."""
    if (n, causal) not in _ORDERS:
        _ORDERS[n, causal] = [
            sorted(range(i + 1 if causal else n), key=lambda j, i=i: (j == i, abs(i - j), j))
            for i in range(n)
        ]
    return _ORDERS[n, causal]


def aggregate(selection, values):
    """The value at each query's selected position."""
    if not isinstance(values, list):
        return _aggregate_batch(selection, values)
    return [values[j] for j in selection]


def aggregate_sum(selection, values):
    """Per query, the sum of the values at all its selected positions."""
    if not isinstance(values, list):
        return _aggregate_sum_batch(selection, values)
    sums = {}  # id(list of positions) -> its sum: queries may share a list (see select)
    out = []
    for selected in selection:
        total = sums.get(id(selected))
        if total is None:
            total = sums[id(selected)] = sum([values[j] for j in selected])
        out.append(total)
    return out


class Runtime:
    """One program's helpers, run and run_batch, over its data (see bind)."""

    aggregate = staticmethod(aggregate)  # the same for every program
    aggregate_sum = staticmethod(aggregate_sum)

    def __init__(self, program, data):
        self.program = program
        self.vocab = tuple(data["vocab"])
        self.labels = tuple(data["labels"])
        self.masked = tuple(data["masked"])
        self.unk = data["unk"]
        self.n_ctx = data["n_ctx"]
        self.causal = data["causal"]
        # A categorical variable holds tokens (strings) or, if not, one of these integers.
        self.integers = range(max(data["d_var"], self.n_ctx))
        self.index = {token: i for i, token in enumerate(self.vocab)}
        # The classifier adds its variables' weights in this order (float addition is not
        # associative); the token_valued variables hold tokens.
        self.terms = tuple(data["terms"])
        self.categorical = data["categorical"]
        self.numerical = data["numerical"]
        self.token_valued = frozenset(data["token_valued"])
        # Per classifier variable, value -> the weights (one per label) it adds to the logits;
        # a numerical variable's rows, weight * value, are added as its values are first seen.
        self.rows = {name: {} for name in self.numerical}
        for name, rows in self.categorical.items():
            values = self.vocab if name in self.token_valued else self.integers
            self.rows[name] = dict(zip(values, rows, strict=False))  # rows: d_var or |vocab|
        self.decided = {}  # classifier variable values (terms order) -> label (run)
        self.weights = {}  # classifier variable -> its weights as a numpy array (run_batch)
        self.matches = {}  # (predicate, queries are tokens, keys are tokens) -> match_table

    def match_table(self, predicate, queries, keys):
        """{query value: the set of key values it matches}, over every value queries and keys
        of these kinds can hold (tokens, or integers). Made once per predicate, so that
        attention looks matches up instead of calling predicate for every pair of positions."""
        kinds = (predicate, isinstance(queries[0], str), isinstance(keys[0], str))
        if kinds not in self.matches:
            query_values, key_values = (
                self.vocab if tokens else self.integers for tokens in kinds[1:]
            )
            self.matches[kinds] = {
                query: frozenset(key for key in key_values if predicate(query, key))
                for query in query_values
            }
        return self.matches[kinds]

    def select_closest(self, keys, queries, predicate):
        """Per query position i, the key position it attends to: the first position in its
        preference_order whose key matches (predicate(queries[i], keys[j])), or 0 (BOS) if
        none."""
        if not isinstance(keys, list):
            return self._select_closest_batch(keys, queries, predicate)
        table = self.match_table(predicate, queries, keys)
        selected = []
        orders = preference_order(len(keys), self.causal)
        for query, order in zip(queries, orders, strict=True):
            wanted = table[query]
            for j in order:
                if keys[j] in wanted:
                    selected.append(j)
                    break
            else:  # no key matches
                selected.append(0)
        return selected

    def select(self, keys, queries, predicate):
        """Per query position i, the key positions j it may attend to (j <= i when causal)
        whose key matches: predicate(queries[i], keys[j])."""
        if not isinstance(keys, list):
            return self._select_batch(keys, queries, predicate)
        table = self.match_table(predicate, queries, keys)
        matching = {}  # per set of wanted key values, the positions of the keys in it
        selection = []
        for i, query in enumerate(queries):
            wanted = table[query]
            positions = matching.get(wanted)
            if positions is None:
                positions = matching[wanted] = [j for j, key in enumerate(keys) if key in wanted]
            # Queries wanting the same keys share one list (read, never changed, by aggregate
            # and aggregate_sum); causal, each keeps the part up to itself.
            selection.append(positions[: bisect_right(positions, i)] if self.causal else positions)
        return selection

    def apply(self, function, xs, ys):
        """function(x, y) at every position: an MLP, applied as the table it is."""
        if not isinstance(xs, list):
            return self._apply_batch(function, xs, ys)
        return [function(x, y) for x, y in zip(xs, ys, strict=True)]

    def classify(self, columns):
        """One label per position: each label's logit starts at 0.0 and adds, in terms order,
        the weight of every variable (float64, one addition at a time: the interpreter's exact
        rounding); masked labels never win and ties go to the lowest label index."""
        if not isinstance(columns["tokens"], list):
            return self._classify_batch(columns)
        labels = []
        for values in zip(*[columns[name] for name in self.terms], strict=True):
            # Positions often hold the same values: each such tuple is decided once.
            label = self.decided.get(values)
            if label is None:
                if len(self.decided) >= _MOST_DECIDED:
                    self.decided.clear()
                label = self.decided[values] = self.decide(values)
            labels.append(label)
        return labels

    def decide(self, values):
        """The label of one position whose classifier variables hold ``values`` (terms order)."""
        rows = []  # the weights each variable adds, one per label
        for name, value in zip(self.terms, values, strict=True):
            row = self.rows[name].get(value)
            if row is None:  # a numerical variable's value, seen for the first time
                row = self.rows[name][value] = [weight * value for weight in self.numerical[name]]
            rows.append(row)
        logits = []
        for label, masked in enumerate(self.masked):
            if masked:
                logits.append(float("-inf"))
                continue
            logit = 0.0
            for row in rows:  # not sum(): since Python 3.12 it compensates rounding errors
                logit += row[label]
            logits.append(logit)
        return self.labels[max(range(len(logits)), key=logits.__getitem__)]

    def check_input(self, tokens):
        """The tokens to run on (unknown ones become unk), or ValueError naming the problem."""
        tokens = list(tokens)
        if 0 < len(tokens) <= self.n_ctx and all(self.index.get(token, 0) for token in tokens):
            return tokens  # all known, none padding (index 0): the usual case, checked quickly
        if not tokens:
            raise ValueError("the input is empty: give at least one token.")
        if len(tokens) > self.n_ctx:
            raise ValueError(
                f"the input has {len(tokens)} tokens but the model's context holds {self.n_ctx}."
            )
        checked = []
        for position, token in enumerate(tokens):
            index = self.index.get(token)
            if index is None and self.unk is None:
                known = ", ".join(repr(t) for t in self.vocab[1:])
                raise ValueError(
                    f"token {token!r} (position {position}) is not in the vocabulary: {known}."
                )
            if index == 0:
                raise ValueError(
                    f"{self.vocab[0]!r} (position {position}) is padding, not an input token."
                )
            checked.append(self.unk if index is None else token)
        return checked

    def run(self, tokens):
        """One label per input token (a list of strings); ValueError for bad input."""
        tokens = self.check_input(tokens)
        n = len(tokens)
        return self.classify(self.program(tokens, list(range(n)), [1] * n))

    def run_batch(self, inputs):
        """run() of every input, computed together with numpy (needed here only): the inputs
        of each length go through program() as arrays [inputs, length]. ValueError names the
        first bad input."""
        import numpy as np

        checked = []
        for number, tokens in enumerate(inputs):
            try:
                checked.append(self.check_input(tokens))
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
                # Tokens are stored as ~index (-1 - index): token and integer values never
                # share a number, and _decode tells them apart.
                tokens = np.array(
                    [[~self.index[t] for t in checked[k]] for k in chunk], dtype=np.int64
                )
                positions = np.broadcast_to(np.arange(n, dtype=np.int64), tokens.shape)
                labels = self.classify(self.program(tokens, positions, np.ones_like(tokens)))
                for number, row in zip(chunk, labels, strict=True):
                    outputs[number] = row
        return outputs

    # The helpers on numpy arrays [inputs, length] (run_batch). Predicates and MLP functions
    # are called once per distinct pair of values in the batch and looked up for every
    # position.

    def _decode(self, number):
        """The value a batch array's integer stands for (tokens are ~index, see run_batch)."""
        return self.vocab[~number] if number < 0 else number

    def _encode(self, value):
        """The integer standing for a value in a batch array (the inverse of _decode)."""
        return ~self.index[value] if isinstance(value, str) else value

    def _span(self, column):
        """Every value from an array's smallest to its largest (decoded), and per position the
        index of its value among them."""
        low = int(column.min())
        return [self._decode(number) for number in range(low, int(column.max()) + 1)], column - low

    def _matches_batch(self, keys, queries, predicate):
        """[inputs, n, n]: whether key j matches query i, from match_table."""
        import numpy as np

        query_values, q = self._span(queries)
        key_values, k = self._span(keys)
        table = self.match_table(predicate, query_values, key_values)
        matches = np.array([[key in table[query] for key in key_values] for query in query_values])
        return np.take(matches, q[:, :, None] * len(key_values) + k[:, None, :])

    def _select_closest_batch(self, keys, queries, predicate):
        import numpy as np

        n = keys.shape[-1]
        ranks = _ranks(n, self.causal)
        rank = np.where(self._matches_batch(keys, queries, predicate), ranks, n)
        return rank.argmin(-1)  # where nothing matches, every rank is n: argmin gives 0 (BOS)

    def _select_batch(self, keys, queries, predicate):
        import numpy as np

        matches = self._matches_batch(keys, queries, predicate)
        return matches & np.tri(keys.shape[-1], dtype=bool) if self.causal else matches

    def _apply_batch(self, function, xs, ys):
        """function(x, y) at every position, called once per distinct (x, y) pair."""
        import numpy as np

        x_values, x = self._span(xs)
        y_values, y = self._span(ys)
        width = len(y_values)
        pairs, index = np.unique(x * width + y, return_inverse=True)  # the (x, y) pairs present
        outputs = [
            self._encode(function(x_values[p // width], y_values[p % width]))
            for p in pairs.tolist()
        ]
        return np.array(outputs, dtype=np.int64)[index.reshape(xs.shape)]

    def _classify_batch(self, columns):
        """classify() on arrays: the same additions, in the same order, one term at a time."""
        import numpy as np

        if not self.weights:
            for name, rows in {**self.categorical, **self.numerical}.items():
                self.weights[name] = np.array(rows, dtype=np.float64)
        logits = np.zeros((*columns["tokens"].shape, len(self.labels)), dtype=np.float64)
        for name in self.terms:
            column = columns[name]
            if name in self.numerical:
                logits += self.weights[name] * column[..., None]
            else:
                values = ~column if name in self.token_valued else column
                logits += np.take(self.weights[name], values, 0)
        logits[..., np.array(self.masked, dtype=bool)] = -np.inf
        return np.array(self.labels, dtype=object)[logits.argmax(-1)].tolist()


def _ranks(n, causal):
    """[n, n]: rank[i, j] is key j's place in query i's preference_order; n if not in it."""
    import numpy as np

    if (n, causal) not in _RANKS:
        _RANKS[n, causal] = np.full((n, n), n, dtype=np.int64)
        for i, order in enumerate(preference_order(n, causal)):
            _RANKS[n, causal][i, order] = range(len(order))
    return _RANKS[n, causal]


def _aggregate_batch(selection, values):
    import numpy as np

    return np.take_along_axis(values, selection, axis=-1)


def _aggregate_sum_batch(selection, values):
    import numpy as np

    return np.einsum("bij,bj->bi", selection, values)
