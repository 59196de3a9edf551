"""`StandardTransformer`: the ordinary Transformer the paper compares its programs against.

A pre-LN encoder (LayerNorm before attention and before the MLP, as in the paper's code, which
builds ``nn.TransformerEncoderLayer(norm_first=True)``): learned token and position embeddings,
``n_layers`` blocks of multi-head self-attention + ReLU MLP, a final LayerNorm and a linear
classifier over the task's labels at every position. It sees exactly what a Transformer Program
sees: the same token ids, and the same attention mask (`allowed_keys`: padding keys hidden,
later keys hidden for causal tasks).

Every random draw takes an explicit generator: initialisation (PyTorch's default schemes, drawn
from the generator passed to the constructor) and dropout (from the generator passed to
``forward``; without one, no dropout: evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tprog.model.program import allowed_keys


@dataclass(frozen=True)
class StandardShape:
    """Everything that fixes the parameter shapes of a baseline model (saved with every run)."""

    n_tokens: int  # input vocabulary size
    n_ctx: int
    n_labels: int
    n_layers: int
    d_model: int
    n_heads: int  # total heads per layer; each has width d_model // n_heads
    d_mlp: int
    dropout: float
    causal: bool


def _linear(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    # PyTorch's default Linear init (weight and bias uniform in +-1/sqrt(d_in)), but drawn from
    # ``generator``; skip_init avoids drawing (and discarding) from the global RNG first.
    layer = nn.utils.skip_init(nn.Linear, d_in, d_out)
    bound = 1 / math.sqrt(d_in)
    nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def _embedding(n: int, d_model: int, generator: torch.Generator) -> nn.Parameter:
    # nn.Embedding's default init: standard normal.
    return nn.Parameter(torch.randn(n, d_model, generator=generator))


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout drawing its mask from ``generator``; the identity without one."""
    if generator is None or p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention over the allowed keys."""

    def __init__(self, shape: StandardShape, generator: torch.Generator):
        super().__init__()
        if shape.d_model % shape.n_heads:
            raise ValueError(f"d_model={shape.d_model} is not divisible by {shape.n_heads} heads")
        self.n_heads, self.p = shape.n_heads, shape.dropout
        self.qkv = _linear(shape.d_model, 3 * shape.d_model, generator)
        self.out = _linear(shape.d_model, shape.d_model, generator)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        # x: [B, N, D]; allowed: [B, 1, N, N] (True = query i may attend to key j)
        batch, n, d_model = x.shape
        d_head = d_model // self.n_heads
        # [B, N, 3D] -> [B, N, 3, H, Dh] -> [3, B, H, N, Dh]
        q, k, v = self.qkv(x).view(batch, n, 3, self.n_heads, d_head).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d_head)  # [B, H, N, N]
        # Key 0 (<s>) is always allowed, so no row is all -inf and softmax never gives NaN.
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        mixed = dropout(weights, self.p, generator) @ v  # [B, H, N, Dh]
        # [B, H, N, Dh] -> [B, N, H, Dh] -> [B, N, D]
        return self.out(mixed.transpose(1, 2).reshape(batch, n, d_model))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, shape: StandardShape, generator: torch.Generator):
        super().__init__()
        self.p = shape.dropout
        self.attn_norm = nn.LayerNorm(shape.d_model)
        self.attn = SelfAttention(shape, generator)
        self.mlp_norm = nn.LayerNorm(shape.d_model)
        self.mlp_in = _linear(shape.d_model, shape.d_mlp, generator)
        self.mlp_out = _linear(shape.d_mlp, shape.d_model, generator)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        # x: [B, N, D] -> [B, N, D]
        x = x + dropout(self.attn(self.attn_norm(x), allowed, generator), self.p, generator)
        hidden = F.relu(self.mlp_in(self.mlp_norm(x)))  # [B, N, d_mlp]
        return x + dropout(self.mlp_out(dropout(hidden, self.p, generator)), self.p, generator)


class StandardTransformer(nn.Module):
    def __init__(
        self, shape: StandardShape, masked_labels: Sequence[bool], generator: torch.Generator
    ):
        super().__init__()
        self.shape = shape
        self.tokens = _embedding(shape.n_tokens, shape.d_model, generator)
        self.positions = _embedding(shape.n_ctx, shape.d_model, generator)
        self.blocks = nn.ModuleList(Block(shape, generator) for _ in range(shape.n_layers))
        self.final_norm = nn.LayerNorm(shape.d_model)
        self.classifier = _linear(shape.d_model, shape.n_labels, generator)
        self.register_buffer("masked", torch.tensor(list(masked_labels), dtype=torch.bool))

    def forward(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, N, n_labels]`` for ids ``[B, N]`` (right-padded) and lengths ``[B]``;
        dropout is applied when a ``generator`` is given (training), never otherwise."""
        n = ids.shape[1]
        x = self.tokens[ids] + self.positions[:n]  # [B, N, D]
        x = dropout(x, self.shape.dropout, generator)
        allowed = allowed_keys(lengths, n, self.shape.causal)[0].unsqueeze(1)  # [B, 1, N, N]
        for block in self.blocks:
            x = block(x, allowed, generator)
        logits = self.classifier(self.final_norm(x))
        # A large finite value, not -inf: the loss multiplies masked positions by zero.
        return logits.masked_fill(self.masked, -1e9)

    @torch.no_grad()
    def predict(self, ids: torch.Tensor, lengths: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Label ids ``[B, N]`` (argmax, no dropout), ``chunk`` sequences per forward pass."""
        outs = [
            self(ids[s : s + chunk], lengths[s : s + chunk]).argmax(-1)
            for s in range(0, len(ids), chunk)
        ]
        return torch.cat(outs) if outs else torch.zeros_like(ids)
