"""The residual layout: the one record of which variable lives where.

The residual stream is two stacks that only ever grow: a categorical stack
``[n_cat_vars, batch, n_ctx, d_var]`` of (near) one-hot variables and a numerical stack
``[n_num_vars, batch, n_ctx]`` (variable-major, held as chunks: see `layers.read_vars`).
Variables are appended in a fixed order, so a variable's index in its stack, its name and the
module that writes it are all derived here and nowhere else.

Categorical stack order: tokens, positions, then per layer its categorical heads, categorical
MLPs and numerical MLPs (numerical MLPs output categorical variables). Numerical stack order:
ones, then per layer its numerical heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["categorical", "numerical"]
Stage = Literal["attention", "mlp", "output"]


@dataclass(frozen=True)
class VarSpec:
    name: str
    kind: Kind
    index: int  # position in its own stack
    layer: int  # -1 for the inputs


@dataclass(frozen=True)
class Layout:
    n_layers: int
    n_heads_cat: int
    n_heads_num: int
    n_mlps_cat: int
    n_mlps_num: int

    # Names are the contract with programs: ``attn_1_2`` is the output of categorical head 2
    # of layer 1, and stays traceable to it through every later pass.
    @staticmethod
    def head_name(layer: int, head: int, kind: Kind) -> str:
        prefix = "attn" if kind == "categorical" else "num_attn"
        return f"{prefix}_{layer}_{head}"

    @staticmethod
    def mlp_name(layer: int, mlp: int, kind: Kind) -> str:
        prefix = "mlp" if kind == "categorical" else "num_mlp"
        return f"{prefix}_{layer}_{mlp}"

    @property
    def cat_per_layer(self) -> int:
        return self.n_heads_cat + self.n_mlps_cat + self.n_mlps_num

    def n_cat(self, layer: int, stage: Stage = "attention") -> int:
        """Categorical variables visible to ``stage`` of ``layer`` (all of them at "output")."""
        if stage == "output":
            return 2 + self.n_layers * self.cat_per_layer
        extra = self.n_heads_cat if stage == "mlp" else 0
        return 2 + layer * self.cat_per_layer + extra

    def n_num(self, layer: int, stage: Stage = "attention") -> int:
        if stage == "output":
            return 1 + self.n_layers * self.n_heads_num
        extra = self.n_heads_num if stage == "mlp" else 0
        return 1 + layer * self.n_heads_num + extra

    def categorical(self) -> list[VarSpec]:
        out = [VarSpec("tokens", "categorical", 0, -1), VarSpec("positions", "categorical", 1, -1)]
        for layer in range(self.n_layers):
            names = [self.head_name(layer, h, "categorical") for h in range(self.n_heads_cat)]
            names += [self.mlp_name(layer, m, "categorical") for m in range(self.n_mlps_cat)]
            names += [self.mlp_name(layer, m, "numerical") for m in range(self.n_mlps_num)]
            out += [
                VarSpec(name, "categorical", len(out) + i, layer) for i, name in enumerate(names)
            ]
        return out

    def numerical(self) -> list[VarSpec]:
        out = [VarSpec("ones", "numerical", 0, -1)]
        for layer in range(self.n_layers):
            for head in range(self.n_heads_num):
                out.append(
                    VarSpec(self.head_name(layer, head, "numerical"), "numerical", len(out), layer)
                )
        return out

    def in_creation_order(self) -> list[VarSpec]:
        """Inputs, then per layer: categorical heads, numerical heads, categorical MLPs,
        numerical MLPs. This is also the classifier's accumulation order."""
        cat, num = self.categorical(), self.numerical()
        order = [cat[0], cat[1], num[0]]
        for layer in range(self.n_layers):
            layer_cat = [v for v in cat if v.layer == layer]
            heads_cat = layer_cat[: self.n_heads_cat]
            mlps = layer_cat[self.n_heads_cat :]
            order += heads_cat + [v for v in num if v.layer == layer] + mlps
        return order
