"""The layers of a Transformer Program, each vectorised over all heads/MLPs of one layer.

Every layer runs in two modes: soft (``sampling`` given: Gumbel-softmax at temperature tau)
and hard (``sampling is None``: argmax everywhere). Hard mode is exactly the program: MLPs
are evaluated as their lookup tables, so model and extracted program share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tprog.errors import TprogError
from tprog.model.sampling import Sampling, choose

# log(match + _EPS): an exact match scores 0, a non-match about -46, far below any bias.
_EPS = 1e-20


def random_parameter(
    shape: tuple[int, ...], scale: float, generator: torch.Generator
) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape, generator=generator) * scale)


class Read(nn.Module):
    """``n_reads`` learned choices, each of exactly one of ``n_options`` variables."""

    def __init__(self, n_reads: int, n_options: int, generator: torch.Generator):
        super().__init__()
        self.logits = random_parameter((n_reads, n_options), 1 / math.sqrt(n_options), generator)

    def forward(self, sampling: Sampling | None) -> torch.Tensor:
        return choose(self.logits, sampling)  # [n_reads, n_options]

    def chosen(self) -> list[int]:
        return self.logits.argmax(-1).tolist()


def selection_bias(n_ctx: int) -> torch.Tensor:
    """``bias[i, j]`` in [-1, 0): strictly orders keys for query ``i`` by the selection rule.

    rank 2d-1 for a key d positions before i, 2d for d after, 2n for i itself, so closer keys
    win, the earlier of two equally close keys wins, and i itself comes last.
    """
    i = torch.arange(n_ctx).unsqueeze(1)
    j = torch.arange(n_ctx).unsqueeze(0)
    distance = (i - j).abs()
    rank = torch.where(j < i, 2 * distance - 1, 2 * distance)
    rank = torch.where(j == i, torch.full_like(rank, 2 * n_ctx), rank)
    return -rank.float() / (2 * n_ctx)


def read_vars(chunks: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Mix variables of a variable-major stream: chunks ``[V_c, *rest]`` x ``[R, sum V_c]`` ->
    ``[R, *rest]``.

    The stream is the concatenation of its chunks along dim 0, never materialised: each chunk
    is one GEMM over its flattened rows (no copies, which is why the stream is variable-major),
    and the layer appending a chunk does not copy the ones before it. The weights are split in
    one operation rather than sliced per chunk: backward then joins their gradients in one copy
    instead of padding each slice's gradient to full width and adding them up (the same values).
    """
    rest = chunks[0].shape[1:]
    parts = weights.split([chunk.shape[0] for chunk in chunks], dim=1)  # [R, V_c] views
    out = None
    for chunk, part in zip(chunks, parts, strict=True):
        rows = chunk.reshape(chunk.shape[0], -1)  # [V_c, prod(rest)], a view
        out = part @ rows if out is None else torch.addmm(out, part, rows)
    return out.view(weights.shape[0], *rest)


class _BatchedMatmul(torch.autograd.Function):
    """``a @ b`` over a flat batch: ``[Z, n, m] x [Z, m, p] -> [Z, n, p]``.

    The same product as ``torch.bmm`` (plus an optional bias ``[Z, p]``), with a backward that
    hands bmm contiguous operands and transposes the smaller side. Autograd's own bmm backward
    multiplies strided views, which on the thousands of 8x8 matrices of an attention layer is
    about 10x slower than this, and for an MLP's weight gradient copies the large
    ``[rows, d_mlp]`` activations.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        # bias [Z, p] broadcast over rows; fused into the product when present
        return torch.bmm(a, b) if bias is None else torch.baddbmm(bias.unsqueeze(1), a, b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        grad = grad.contiguous()
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:  # grad @ bᵀ
            grad_a = torch.bmm(grad, b.transpose(1, 2).contiguous())
        if ctx.needs_input_grad[1]:  # aᵀ @ grad, or (gradᵀ @ a)ᵀ when a is the larger
            if a.numel() > grad.numel():
                grad_b = torch.bmm(grad.transpose(1, 2).contiguous(), a).transpose(1, 2)
            else:
                grad_b = torch.bmm(a.transpose(1, 2).contiguous(), grad)
        grad_bias = grad.sum(1) if ctx.needs_input_grad[2] else None
        return grad_a, grad_b, grad_bias


def batched_matmul(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``a @ b (+ bias)`` over the last two dims: ``[..., n, m] x [..., m, p] (+ [..., p])
    -> [..., n, p]``.

    Exact on 0/1 inputs (hard mode): every entry is a sum of at most ``m`` products of 0/1.
    """
    batch = a.shape[:-2]
    flat_bias = None if bias is None else bias.reshape(-1, bias.shape[-1])
    out = _BatchedMatmul.apply(
        a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]).contiguous(), flat_bias
    )
    return out.view(*batch, a.shape[-2], b.shape[-1])


def _match(
    q: torch.Tensor, predicate: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """``match[h, b, i, j] = q[i]ᵀ P k[j]`` on allowed pairs; exactly 0/1 in hard mode.

    q, key: [H, B, N, k]; predicate: [H, k, k]; allowed: [1, B, N, N] -> [H, B, N, N].
    """
    heads, batch, n, k = q.shape
    wanted = batched_matmul(q.view(heads, batch * n, k), predicate).view(
        q.shape
    )  # the key value wanted
    return batched_matmul(wanted, key.transpose(-1, -2)) * allowed


class CatAttention(nn.Module):
    """Categorical heads: select the closest matching key (BOS if none), copy its value."""

    def __init__(self, n_heads: int, n_vars: int, d_var: int, n_ctx: int, generator):
        super().__init__()
        self.n_heads, self.d_var = n_heads, d_var
        self.read = Read(3 * n_heads, n_vars, generator)  # query, key, value per head
        self.predicate = random_parameter((n_heads, d_var, d_var), 1 / math.sqrt(d_var), generator)
        self.register_buffer("bias", selection_bias(n_ctx), persistent=False)

    def forward(
        self, cat: Sequence[torch.Tensor], allowed: torch.Tensor, sampling: Sampling | None
    ):
        # cat: chunks [V_c, B, N, k] -> q/key/value: [H, B, N, k] each
        q, key, value = read_vars(cat, self.read(sampling)).view(3, self.n_heads, *cat[0].shape[1:])
        match = _match(q, choose(self.predicate, sampling), key, allowed)
        # BOS default: where nothing matches, position 0 gets a full match. Exact in hard
        # mode (total/(total+1e-10) is exactly 1.0 for any total >= 1 in float32).
        total = match.sum(-1, keepdim=True)
        to_bos = F.relu(1.0 - total / (total + 1e-10))
        match = torch.cat([match[..., :1] + to_bos, match[..., 1:]], dim=-1)
        n = allowed.shape[-1]
        scores = torch.log(match + _EPS) + self.bias[:n, :n]
        scores = scores.masked_fill(~allowed, -1e30)
        if sampling is None:
            attention = F.one_hot(scores.argmax(-1), n).to(value.dtype)
        else:
            attention = choose(scores / math.sqrt(self.d_var), sampling)
        # [H, B, N, N] x [H, B, N, k] -> [H, B, N, k]: H new categorical variables
        return batched_matmul(attention, value)

    def chosen(self) -> dict[str, list]:
        reads = self.read.chosen()
        h = self.n_heads
        return {
            "query": reads[:h],
            "key": reads[h : 2 * h],
            "value": reads[2 * h :],
            "predicate": self.predicate.argmax(-1).tolist(),
        }


class NumAttention(nn.Module):
    """Numerical heads: sum a numerical value over all matching keys (no BOS default)."""

    def __init__(self, n_heads: int, n_cat: int, n_num: int, d_var: int, generator):
        super().__init__()
        self.n_heads = n_heads
        self.read = Read(2 * n_heads, n_cat, generator)  # query, key per head
        self.read_value = Read(n_heads, n_num, generator)
        self.predicate = random_parameter((n_heads, d_var, d_var), 1 / math.sqrt(d_var), generator)

    def forward(self, cat, num, allowed, sampling: Sampling | None) -> torch.Tensor:
        # cat: chunks [V_c, B, N, k], num: chunks [U_c, B, N]
        # -> q/key: [H, B, N, k], value: [H, B, N]
        q, key = read_vars(cat, self.read(sampling)).view(2, self.n_heads, *cat[0].shape[1:])
        value = read_vars(num, self.read_value(sampling))
        match = _match(q, choose(self.predicate, sampling), key, allowed)
        return (match * value.unsqueeze(2)).sum(-1)  # [H, B, N]: H new numerical variables

    def chosen(self) -> dict[str, list]:
        reads = self.read.chosen()
        return {
            "query": reads[: self.n_heads],
            "key": reads[self.n_heads :],
            "value": self.read_value.chosen(),
            "predicate": self.predicate.argmax(-1).tolist(),
        }


class _MLPs(nn.Module):
    """``n_mlps`` independent MLPs ``2*d_in -> d_mlp -> d_var`` whose argmax is categorical."""

    def __init__(self, n_mlps: int, n_vars: int, d_in: int, d_mlp: int, d_var: int, generator):
        super().__init__()
        self.n_mlps, self.d_var = n_mlps, d_var
        self.read = Read(2 * n_mlps, n_vars, generator)
        self.w_in = random_parameter((n_mlps, 2 * d_in, d_mlp), 1 / math.sqrt(d_mlp), generator)
        self.b_in = nn.Parameter(torch.zeros(n_mlps, d_mlp))
        self.w_out = random_parameter((n_mlps, d_mlp, d_var), 1 / math.sqrt(d_var), generator)
        self.b_out = nn.Parameter(torch.zeros(n_mlps, d_var))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: [M, rows, 2*d_in] -> [M, rows, d_var]."""
        hidden = F.relu(batched_matmul(x, self.w_in, self.b_in))
        return batched_matmul(hidden, self.w_out, self.b_out)

    def soft(self, inputs: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """inputs: [M, 2, B, N, d_in] -> [M, B, N, d_var] relaxed one-hot outputs."""
        m, _, batch, n, d_in = inputs.shape
        x = inputs.view(m, 2, batch * n, d_in).permute(0, 2, 1, 3).reshape(m, batch * n, 2 * d_in)
        # The logits go to the choice as they are: softmax, with or without noise, is the same
        # function of the logits and of their log_softmax, which would only cost a pass.
        return choose(self.logits(x), sampling).view(m, batch, n, self.d_var)

    def chosen(self) -> list[tuple[int, int]]:
        reads = self.read.chosen()
        return [(reads[2 * m], reads[2 * m + 1]) for m in range(self.n_mlps)]


class CatMLP(_MLPs):
    def __init__(self, n_mlps: int, n_vars: int, d_mlp: int, d_var: int, generator):
        super().__init__(n_mlps, n_vars, d_var, d_mlp, d_var, generator)

    def forward(self, cat, sampling: Sampling | None, tables: torch.Tensor | None = None):
        # cat: chunks [V_c, B, N, k] -> inputs [M, 2, B, N, k]
        inputs = read_vars(cat, self.read(sampling)).view(self.n_mlps, 2, *cat[0].shape[1:])
        if sampling is not None:
            return self.soft(inputs, sampling)
        tables = self.tables() if tables is None else tables
        a, b = inputs.argmax(-1).unbind(1)  # [M, B, N] each
        out = tables[torch.arange(self.n_mlps).view(-1, 1, 1), a, b]
        return F.one_hot(out, self.d_var).to(cat[0].dtype)

    @torch.no_grad()
    def tables(self) -> torch.Tensor:
        """``[M, k, k]`` argmax output for every pair of input values."""
        eye = torch.eye(self.d_var, device=self.w_in.device)
        pairs = torch.cat(  # [k*k, 2k]: all (a, b) one-hot pairs, a major
            [eye.repeat_interleave(self.d_var, 0), eye.repeat(self.d_var, 1)], dim=-1
        )
        x = pairs.unsqueeze(0).expand(self.n_mlps, -1, -1)  # [M, k*k, 2k]
        return self.logits(x).argmax(-1).view(self.n_mlps, self.d_var, self.d_var)


Bounds = tuple[tuple[int, int], tuple[int, int]]
# Numerical ranges multiply with depth (a head sums up to n_ctx values of an earlier head), so a
# table over the exact domain can outgrow memory; refuse rather than swap.
MAX_TABLE_ENTRIES = 1 << 25


class ProgramTooLarge(TprogError):
    """A lookup table of the program would be too large to enumerate."""


class NumMLP(_MLPs):
    def __init__(self, n_mlps: int, n_vars: int, d_mlp: int, d_var: int, generator):
        super().__init__(n_mlps, n_vars, 1, d_mlp, d_var, generator)

    def forward(self, num, sampling: Sampling | None, tables: list | None = None):
        # num: chunks [U_c, B, N] -> inputs [M, 2, B, N]
        inputs = read_vars(num, self.read(sampling)).view(self.n_mlps, 2, *num[0].shape[1:])
        if sampling is not None:
            return self.soft(inputs.unsqueeze(-1), sampling)
        values = inputs.long()  # exact: hard-mode numerical values are small integers
        if tables is None:
            # Monitoring only (validation during training): the MLP evaluated on the inputs
            # present, without enumerating a possibly huge domain. Programs use the tables.
            flat = values.view(self.n_mlps, 2, -1).transpose(1, 2).float()
            outs = torch.stack([self._one(flat[m], m) for m in range(self.n_mlps)])
            return F.one_hot(outs.view(self.n_mlps, *inputs.shape[2:]), self.d_var).to(inputs.dtype)
        outs = []
        for m, (lows, table) in enumerate(tables):
            a, b = values[m, 0] - lows[0], values[m, 1] - lows[1]
            if a.min() < 0 or b.min() < 0 or a.max() >= table.shape[0] or b.max() >= table.shape[1]:
                raise ValueError(f"numerical MLP {m}: input outside its derived bounds")
            outs.append(table[a, b])
        return F.one_hot(torch.stack(outs), self.d_var).to(inputs.dtype)  # [M, B, N, k]

    @torch.no_grad()
    def tables(self, bounds: list[Bounds], chunk: int = 1 << 16) -> list:
        """Per MLP: ``(lows, table)`` with the argmax output on every integer pair in bounds."""
        out = []
        for m, ((lo_a, hi_a), (lo_b, hi_b)) in enumerate(bounds):
            entries = (hi_a - lo_a + 1) * (hi_b - lo_b + 1)
            if entries > MAX_TABLE_ENTRIES:
                raise ProgramTooLarge(
                    f"numerical MLP {m} reads variables ranging over {lo_a}..{hi_a} and "
                    f"{lo_b}..{hi_b}: {entries} input pairs, more than the {MAX_TABLE_ENTRIES} "
                    "a program table may hold; use fewer layers or model.n_mlps_num=0."
                )
            a = torch.arange(lo_a, hi_a + 1, dtype=torch.float32, device=self.w_in.device)
            b = torch.arange(lo_b, hi_b + 1, dtype=torch.float32, device=self.w_in.device)
            grid = torch.cartesian_prod(a, b).view(-1, 2)  # [|a|*|b|, 2], a major
            flat = torch.cat(
                [self._one(grid[s : s + chunk], m) for s in range(0, len(grid), chunk)]
            )
            out.append(((lo_a, lo_b), flat.view(len(a), len(b))))
        return out

    def _one(self, x: torch.Tensor, m: int) -> torch.Tensor:
        hidden = F.relu(x @ self.w_in[m] + self.b_in[m])
        return (hidden @ self.w_out[m] + self.b_out[m]).argmax(-1)
