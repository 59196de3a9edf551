"""Discrete choices: Gumbel-softmax while training, argmax in hard mode.

Every random draw takes an explicit `torch.Generator`; hard mode takes none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Sampling:
    """Soft mode: relaxed one-hot samples at temperature ``tau`` using ``generator``.

    With ``noise`` off, every choice is the plain softmax at ``tau`` instead: deterministic, and
    at a low ``tau`` the function the hard model computes, made differentiable. Noise is what
    lets training explore; it also blurs what the hard model does. Categorical attention is a
    choice too, and Gumbel noise on its scores swamps the small position bias that orders
    matching keys: the noisy soft model attends to a random match where the hard model attends
    to the closest one.

    With ``straight_through``, every choice is the argmax (of the noisy logits, with noise)
    going forward and the softmax at ``tau`` going back. Without noise the forward pass then
    computes what the hard model computes, the program, while gradients still reach every
    discrete choice; at a low ``tau`` a plain softmax saturates and all but stops them (Bengio
    et al. 2013; Jang et al. 2017). ``tau`` then shapes the gradient only.
    """

    tau: float
    generator: torch.Generator
    noise: bool = True
    straight_through: bool = False


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """One-hot of the argmax along the last dim (ties to the lowest index)."""
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)


# exp(-87) ~ 1.6e-38 is about the smallest normal float32; anything smaller is 0 here.
_UNDERFLOW = 87.0


class _SoftmaxAtTau(torch.autograd.Function):
    """``softmax(x / tau)`` over the last dim, in elementwise operations and two reductions.

    Every choice is a softmax over a short last dim (``d_var`` values, ``n`` keys). PyTorch's
    CPU softmax kernel works row by row and, on rows of 8, takes 8x longer than these passes
    over memory (and its backward 10x). Folding ``1 / tau`` in saves a division and its
    backward.

    Entries more than ``_UNDERFLOW`` below their row's largest are set to exactly 0 instead of
    going through ``exp``: the CPU's vectorised ``exp`` takes a slow path, 10-100x slower, on
    every argument whose result is subnormal or 0, and at the low temperatures of late
    training (and on the masked keys of attention) most arguments are such.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, tau: float) -> torch.Tensor:
        y = x - x.amax(-1, keepdim=True)  # the largest entry of each row becomes exp(0)
        y.mul_(1.0 / tau)
        negligible = y < -_UNDERFLOW
        y.clamp_(min=-_UNDERFLOW).exp_().masked_fill_(negligible, 0.0)
        y.div_(y.sum(-1, keepdim=True))
        ctx.save_for_backward(y)
        ctx.tau = tau
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        # d softmax(x/tau) = y * (g - <g, y>) / tau, row by row
        grad_y = grad * y
        grad_x = torch.addcmul(grad_y, y, grad_y.sum(-1, keepdim=True), value=-1.0)
        return grad_x.mul_(1.0 / ctx.tau), None


def softmax_at(x: torch.Tensor, tau: float) -> torch.Tensor:
    """``softmax(x / tau)`` over the last dim (differentiable in ``x``)."""
    return _SoftmaxAtTau.apply(x, tau)


def with_gumbel_noise(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    noise = torch.rand(
        logits.shape, generator=sampling.generator, dtype=logits.dtype, device=logits.device
    )
    # Gumbel noise -log(-log(u)), computed in place on the fresh draw and subtracted without
    # its last negation (a - b is a + (-b), bit for bit). Clamping keeps it finite at u == 0
    # without biasing any realistic draw.
    noise.clamp_(min=1e-20, max=1.0 - 1e-7).log_().neg_().log_()
    return logits - noise


def choose(logits: torch.Tensor, sampling: Sampling | None) -> torch.Tensor:
    """A relaxed sample in soft mode (without noise, the softmax at ``tau``; straight-through,
    its argmax going forward), the exact one-hot argmax in hard mode (``None``)."""
    if sampling is None:
        return one_hot_argmax(logits)
    if sampling.noise:
        logits = with_gumbel_noise(logits, sampling)
    soft = softmax_at(logits, sampling.tau)
    if not sampling.straight_through:
        return soft
    # The argmax of the logits, not of ``soft``: at a low tau two nearly equal logits can round
    # to equal probabilities, and the hard model breaks the tie on the logits. ``soft -
    # soft.detach()`` is exactly 0 going forward and ``soft``'s gradient going back.
    return one_hot_argmax(logits.detach()) + (soft - soft.detach())
