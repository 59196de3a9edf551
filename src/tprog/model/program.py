"""`TransformerProgram`: embeddings, blocks and classifier over a discrete residual stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tprog.model.layers import (
    Bounds,
    CatAttention,
    CatMLP,
    NumAttention,
    NumMLP,
    random_parameter,
    read_vars,
)
from tprog.model.layout import Layout
from tprog.model.sampling import Sampling

# The residual stream: chunks concatenated along dim 0 in creation order (see `read_vars`).
Chunks = list[torch.Tensor]


@dataclass(frozen=True)
class Shape:
    """Everything that fixes the parameter shapes of a model (saved with every run)."""

    layout: Layout
    d_var: int
    n_ctx: int
    d_mlp: int
    n_labels: int
    causal: bool


def allowed_keys(lengths: torch.Tensor, n: int, causal: bool) -> torch.Tensor:
    """``[1, B, N, N]``: key j is a real token (and j <= i when causal)."""
    positions = torch.arange(n, device=lengths.device)
    allowed = positions.view(1, 1, 1, n) < lengths.view(1, -1, 1, 1)
    if causal:
        allowed = allowed & (positions.view(1, 1, n, 1) >= positions.view(1, 1, 1, n))
    return allowed.expand(1, -1, n, n)


class Block(nn.Module):
    """One layer: heads read the stream, then MLPs read it with the heads' outputs."""

    def __init__(self, shape: Shape, layer: int, generator: torch.Generator):
        super().__init__()
        lay, k = shape.layout, shape.d_var
        n_cat, n_num = lay.n_cat(layer), lay.n_num(layer)
        n_cat_mid, n_num_mid = lay.n_cat(layer, "mlp"), lay.n_num(layer, "mlp")
        self.cat_attn = (
            CatAttention(lay.n_heads_cat, n_cat, k, shape.n_ctx, generator)
            if lay.n_heads_cat
            else None
        )
        self.num_attn = (
            NumAttention(lay.n_heads_num, n_cat, n_num, k, generator) if lay.n_heads_num else None
        )
        self.cat_mlp = (
            CatMLP(lay.n_mlps_cat, n_cat_mid, shape.d_mlp, k, generator) if lay.n_mlps_cat else None
        )
        self.num_mlp = (
            NumMLP(lay.n_mlps_num, n_num_mid, shape.d_mlp, k, generator) if lay.n_mlps_num else None
        )

    def forward(
        self, cat: Chunks, num: Chunks, allowed, sampling: Sampling | None, tables=(None, None)
    ):
        # cat: chunks [V_c, B, N, k], num: chunks [U_c, B, N]; this layer appends its outputs.
        heads_cat = [self.cat_attn(cat, allowed, sampling)] if self.cat_attn else []
        heads_num = [self.num_attn(cat, num, allowed, sampling)] if self.num_attn else []
        cat, num = [*cat, *heads_cat], [*num, *heads_num]
        mlp_outputs = []
        if self.cat_mlp is not None:
            mlp_outputs.append(self.cat_mlp(cat, sampling, tables[0]))
        if self.num_mlp is not None:
            mlp_outputs.append(self.num_mlp(num, sampling, tables[1]))
        return [*cat, *mlp_outputs], num


class TransformerProgram(nn.Module):
    def __init__(self, shape: Shape, masked_labels: Sequence[bool], generator: torch.Generator):
        super().__init__()
        self.shape = shape
        lay = shape.layout
        self.blocks = nn.ModuleList(Block(shape, layer, generator) for layer in range(lay.n_layers))
        n_cat, n_num = lay.n_cat(0, "output"), lay.n_num(0, "output")
        scale = 1 / shape.n_labels**0.5
        self.w_cat = random_parameter((n_cat, shape.d_var, shape.n_labels), scale, generator)
        self.w_num = random_parameter((n_num, shape.n_labels), scale, generator)
        self.register_buffer("masked", torch.tensor(list(masked_labels), dtype=torch.bool))

    def stream(
        self, ids: torch.Tensor, lengths: torch.Tensor, sampling: Sampling | None, tables=None
    ):
        """The final residual stream, variable-major, as chunks in creation order:
        categorical ``[V_c, B, N, k]`` and numerical ``[U_c, B, N]``."""
        batch, n = ids.shape
        k = self.shape.d_var
        tokens = F.one_hot(ids, k).float()
        positions = F.one_hot(torch.arange(n, device=ids.device), k).float().expand(batch, n, k)
        cat = [torch.stack([tokens, positions])]
        num = [torch.ones(1, batch, n, device=ids.device)]
        allowed = allowed_keys(lengths, n, self.shape.causal)
        if sampling is None and tables is None:
            tables = self.hard_tables()
        for layer, block in enumerate(self.blocks):
            layer_tables = tables[layer] if tables is not None else (None, None)
            cat, num = block(cat, num, allowed, sampling, layer_tables)
        return cat, num

    def forward(self, ids, lengths, sampling: Sampling | None = None, tables=None) -> torch.Tensor:
        """Logits ``[B, N, n_labels]``: float32 in soft mode, exact float64 in hard mode."""
        cat, num = self.stream(ids, lengths, sampling, tables)
        if sampling is not None:
            batch, n = ids.shape
            logits = read_vars(num, self.w_num.T).permute(1, 2, 0)  # [B, N, n_labels]
            # [V_c, B, N, k] x [V_c, k, n_labels], summed over variables (split, not sliced per
            # chunk: see `read_vars`)
            parts = self.w_cat.split([chunk.shape[0] for chunk in cat])
            for chunk, weights in zip(cat, parts, strict=True):
                logits = logits + (chunk.view(chunk.shape[0], batch * n, -1) @ weights).sum(0).view(
                    batch, n, -1
                )
            # A large finite value, not -inf: the loss multiplies masked positions by zero.
            return logits.masked_fill(self.masked, -1e9)
        return self._hard_logits(cat, num)

    def _hard_logits(self, cat: Chunks, num: Chunks) -> torch.Tensor:
        # The IR's classifier arithmetic: float64, one variable at a time in creation order,
        # so model, interpreter and generated code agree bit for bit.
        values = torch.cat([chunk.argmax(-1) for chunk in cat])  # [V, B, N]
        num = torch.cat(num)  # [U, B, N]
        logits = torch.zeros(
            *values.shape[1:], self.shape.n_labels, dtype=torch.float64, device=values.device
        )
        w_cat, w_num = self.w_cat.double(), self.w_num.double()
        for var in self.shape.layout.in_creation_order():
            if var.kind == "categorical":
                logits = logits + w_cat[var.index][values[var.index]]
            else:
                logits = logits + w_num[var.index] * num[var.index, ..., None].double()
        return logits.masked_fill(self.masked, float("-inf"))

    @torch.no_grad()
    def predict(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Hard-mode label ids ``[B, N]``."""
        return self.forward(ids, lengths, None, self.hard_tables()).argmax(-1)

    # --- hard-mode structure ---------------------------------------------------------------
    def numerical_bounds(self) -> list[tuple[int, int]]:
        """Exact integer range of every numerical variable under the hard reads.

        ``ones`` is 1; a head at query position ``i`` sums its value over a subset of the keys
        it may see: all ``n_ctx`` positions, or, causal, the ``i + 1`` up to ``i``. So per
        position its range is the sum of the negative and of the positive parts of its value's
        ranges at those keys. Per position, because a causal head's range grows along the
        sequence: a count of counts at 16 positions reaches 816, where ``16 * 16 * 16`` would
        make an MLP reading two of them a table of 16.8M entries instead of 667k.
        """
        n = self.shape.n_ctx
        # [n, n]: key j is visible from query i in an input that fills the context
        visible = allowed_keys(torch.tensor([n]), n, self.shape.causal)[0, 0]
        ones = torch.ones(n, dtype=torch.int64)
        ranges = [(ones, ones)]  # per variable: (lows [n], highs [n]) over query positions
        for block in self.blocks:
            if block.num_attn is not None:
                for value in block.num_attn.read_value.chosen():
                    lows, highs = ranges[value]
                    ranges.append(
                        (
                            (visible * lows.clamp(max=0)).sum(1),  # [n]
                            (visible * highs.clamp(min=0)).sum(1),
                        )
                    )
        return [(int(lows.min()), int(highs.max())) for lows, highs in ranges]

    def mlp_bounds(self) -> list[list[Bounds]]:
        bounds = self.numerical_bounds()
        return [
            [(bounds[a], bounds[b]) for a, b in block.num_mlp.chosen()] if block.num_mlp else []
            for block in self.blocks
        ]

    @torch.no_grad()
    def hard_tables(self, numerical: bool = True) -> list[tuple]:
        """Per block: (categorical MLP tables, numerical MLP (lows, table) list).

        ``numerical=False`` leaves numerical MLPs to evaluate directly on their inputs: cheap
        monitoring during training, where their exact domain may be large.
        """
        mlp_bounds = self.mlp_bounds()
        return [
            (
                block.cat_mlp.tables() if block.cat_mlp else None,
                block.num_mlp.tables(bounds) if block.num_mlp and numerical else None,
            )
            for block, bounds in zip(self.blocks, mlp_bounds, strict=True)
        ]
