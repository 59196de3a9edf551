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
    """

    tau: float
    generator: torch.Generator
    noise: bool = True


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """One-hot of the argmax along the last dim (ties to the lowest index)."""
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)


def gumbel_softmax(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    uniform = torch.rand(
        logits.shape, generator=sampling.generator, dtype=logits.dtype, device=logits.device
    )
    # Clamping keeps -log(-log(u)) finite at u == 0 without biasing any realistic draw.
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))
    return F.softmax((logits + gumbel) / sampling.tau, dim=-1)


def choose(logits: torch.Tensor, sampling: Sampling | None) -> torch.Tensor:
    """A relaxed sample in soft mode (without noise, the softmax at ``tau``), the exact one-hot
    argmax in hard mode (``None``)."""
    if sampling is None:
        return one_hot_argmax(logits)
    if not sampling.noise:
        return F.softmax(logits / sampling.tau, dim=-1)
    return gumbel_softmax(logits, sampling)
