"""The program IR: plain, immutable, JSON-serialisable data at the centre of tprog.

A `Program` is what a trained Transformer Program *is* once every discrete choice is fixed:
named variables, the modules that compute them (in execution order) and a linear classifier
over the final residual stream. The interpreter, the code generator and every later pass read
this structure; nothing after training touches the network again.

Value conventions (shared by model, interpreter and generated code):
  * a categorical variable holds an integer in ``0..d_var-1``; for ``tokens`` that integer is
    an index into ``Program.vocab``;
  * a numerical variable holds a non-negative integer (``ones`` is 1, attention sums count);
  * ``positions`` holds the position index ``0..len-1``; position 0 is the BOS slot.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FORMAT_VERSION = 1

Kind = Literal["categorical", "numerical"]
# What a categorical variable's values mean, for printing only: indices into the vocabulary
# (``token``), or plain integers (``int``).
ValueType = Literal["token", "int"]
# A predicate entry that matches no key value (values are >= 0). Extraction never produces it;
# simplification writes it where a query value never occurs or asks for a key value that never
# does.
NEVER = -1


@dataclass(frozen=True)
class Variable:
    name: str
    kind: Kind
    value_type: ValueType = "int"
    # The values the variable takes at real positions on the inputs the program was simplified
    # on (sorted), or None when not analysed. For reading and checking; never for evaluation.
    values: tuple[int, ...] | None = None


# Every program's first variables, computed from the input rather than by a module.
INPUT_VARIABLES = (
    Variable("tokens", "categorical", "token"),
    Variable("positions", "categorical"),
    Variable("ones", "numerical"),
)


def current_name(name: str) -> str:
    """A module's variable name as tprog writes it now (``attn_0_1``). Older IR files and
    pruning states name it ``attn_0_1_outputs``; read through this, they still work."""
    return name.removesuffix("_outputs")


@dataclass(frozen=True)
class CatAttention:
    """``out[i] = value[j*]`` where ``j*`` is the closest allowed ``j`` with
    ``key[j] == predicate[query[i]]`` (see DESIGN.md), or 0 (BOS) when there is none.

    With a ``key_map`` (``d_var`` entries, each in ``0..d_var``), keys are compared through it:
    ``key_map[key[j]] == predicate[query[i]]``, so a query value may match several key values;
    ``d_var``, which no predicate names, matches none. Extraction never writes one;
    simplification does, where a head read a relabelling of an earlier variable as its key
    (`tprog.simplify_determined`)."""

    name: str
    query: str
    key: str
    value: str
    predicate: tuple[int, ...]  # query value -> the one key value it matches, or NEVER
    key_map: tuple[int, ...] | None = None  # key value -> the value it is compared as
    kind: Literal["cat_attention"] = "cat_attention"


@dataclass(frozen=True)
class NumAttention:
    """``out[i] = sum of value[j]`` over allowed ``j`` with ``key[j] == predicate[query[i]]``
    (through ``key_map`` where there is one, as in `CatAttention`)."""

    name: str
    query: str
    key: str
    value: str
    predicate: tuple[int, ...]  # query value -> the one key value it matches, or NEVER
    key_map: tuple[int, ...] | None = None  # key value -> the value it is compared as
    kind: Literal["num_attention"] = "num_attention"


@dataclass(frozen=True)
class CatMLP:
    """``out[i] = table[a[i]][b[i]]`` over categorical inputs."""

    name: str
    inputs: tuple[str, str]
    table: tuple[tuple[int, ...], ...]  # d_var x d_var
    kind: Literal["cat_mlp"] = "cat_mlp"


@dataclass(frozen=True)
class NumMLP:
    """``out[i] = table[a[i] - lows[0]][b[i] - lows[1]]`` over numerical inputs; the table
    covers the exact reachable integer domain of both inputs."""

    name: str
    inputs: tuple[str, str]
    lows: tuple[int, int]
    table: tuple[tuple[int, ...], ...]
    kind: Literal["num_mlp"] = "num_mlp"


Module = CatAttention | NumAttention | CatMLP | NumMLP


def reads(module: Module) -> tuple[str, ...]:
    """The variables ``module`` reads: a head's query, key and value, an MLP's inputs."""
    if isinstance(module, CatAttention | NumAttention):
        return (module.query, module.key, module.value)
    return module.inputs


def matched_keys(head: CatAttention | NumAttention, query_value: int, d_var: int) -> list[int]:
    """The key values (of ``0..d_var-1``) a query holding ``query_value`` matches."""
    target = head.predicate[query_value]
    if target == NEVER:
        return []
    compared = head.key_map or range(d_var)
    return [value for value in range(d_var) if compared[value] == target]


def is_read(program: Program, name: str) -> bool:
    """Whether some module of ``program`` reads the variable ``name``."""
    return any(name in reads(module) for module in program.modules)


@dataclass(frozen=True)
class Classifier:
    """``logits[c] = sum_x categorical[x][x[i]][c] + sum_u numerical[u][c] * u[i]``.

    Terms are accumulated in float64, one variable at a time, in the order of ``terms``
    (categorical and numerical interleaved as listed), starting from 0.0. Fixing the order
    makes model, interpreter and generated code bit-for-bit identical. Masked labels never win;
    ties go to the lowest label index.
    """

    labels: tuple[str, ...]
    masked: tuple[bool, ...]
    terms: tuple[str, ...]  # variable names in accumulation order
    categorical: dict[str, tuple[tuple[float, ...], ...]]  # var -> d_var x n_labels
    numerical: dict[str, tuple[float, ...]]  # var -> n_labels


@dataclass(frozen=True)
class Program:
    task: str
    vocab: tuple[str, ...]  # token id -> token; id 0 is <pad>
    n_ctx: int
    d_var: int
    causal: bool
    variables: tuple[Variable, ...]
    modules: tuple[Module, ...]
    classifier: Classifier
    unk: str | None = None  # token that unknown inputs map to, when the vocabulary has one
    meta: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def variable(self, name: str) -> Variable:
        for var in self.variables:
            if var.name == name:
                return var
        raise KeyError(f"program has no variable {name!r}")

    # --- JSON round trip -------------------------------------------------------------------
    def to_json(self) -> str:
        # Floats are written with repr, which round-trips exactly; sorted keys and a fixed
        # indent make the bytes deterministic.
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Program:
        data = json.loads(text)
        return program_from_dict(data)


_MODULE_TYPES = {
    "cat_attention": CatAttention,
    "num_attention": NumAttention,
    "cat_mlp": CatMLP,
    "num_mlp": NumMLP,
}


def _tuples(value: Any) -> Any:
    """Turn nested JSON lists back into the tuples the frozen dataclasses hold."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def program_from_dict(data: dict[str, Any]) -> Program:
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"program format version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    modules = []
    for raw in data["modules"]:
        module_type = _MODULE_TYPES.get(raw.get("kind"))
        if module_type is None:
            raise ValueError(f"unknown module kind {raw.get('kind')!r} in program")
        modules.append(module_type(**{k: _tuples(v) for k, v in raw.items()}))
    clf = data["classifier"]
    return Program(
        task=data["task"],
        vocab=tuple(data["vocab"]),
        n_ctx=data["n_ctx"],
        d_var=data["d_var"],
        causal=data["causal"],
        variables=tuple(Variable(**_tuples(v)) for v in data["variables"]),
        modules=tuple(modules),
        classifier=Classifier(
            labels=tuple(clf["labels"]),
            masked=tuple(clf["masked"]),
            terms=tuple(clf["terms"]),
            categorical={k: _tuples(v) for k, v in clf["categorical"].items()},
            numerical={k: tuple(v) for k, v in clf["numerical"].items()},
        ),
        unk=data.get("unk"),
        meta=data.get("meta", {}),
        format_version=version,
    )
