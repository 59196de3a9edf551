"""The model's hand-written backward passes agree with autograd's own."""

import subprocess
import sys

import pytest
import torch

from tprog.model.layers import batched_matmul, read_vars
from tprog.model.sampling import (
    Sampling,
    choose,
    one_hot_argmax,
    softmax_at,
    with_gumbel_noise,
)


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [
        ((3, 5, 4, 6), (3, 5, 6, 4)),  # attention-sized: many small matrices
        ((2, 40, 3), (2, 3, 7)),  # MLP-sized: a is the larger side of the weight gradient
        ((2, 3, 40), (2, 40, 5)),  # b is the larger side
    ],
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_batched_matmul_gradients(a_shape, b_shape, with_bias):
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)

    a, b = tensor(*a_shape), tensor(*b_shape)
    bias = tensor(*a_shape[:-2], b_shape[-1]) if with_bias else None
    inputs = (a, b) if bias is None else (a, b, bias)
    assert torch.autograd.gradcheck(batched_matmul, inputs)
    expected = a @ b + (0 if bias is None else bias.unsqueeze(-2))
    torch.testing.assert_close(batched_matmul(*inputs), expected)


def test_read_vars_over_chunks_equals_one_stream():
    generator = torch.Generator().manual_seed(1)
    chunks = [torch.randn(v, 3, 4, 2, generator=generator, dtype=torch.float64) for v in (2, 3, 1)]
    weights = torch.randn(5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    whole = torch.cat(chunks)
    expected = torch.einsum("rv,vbnk->rbnk", weights, whole)
    torch.testing.assert_close(read_vars(chunks, weights), expected)
    assert torch.autograd.gradcheck(lambda w: read_vars(chunks, w), (weights,))


@pytest.mark.parametrize("tau", [3.0, 0.3, 0.01])
def test_softmax_at_tau_is_torchs_softmax_with_its_gradient(tau):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(softmax_at(x, tau), torch.softmax(x / tau, -1))
    assert torch.autograd.gradcheck(lambda x: softmax_at(x, tau), (x,))


def test_softmax_at_tau_gives_exact_zeros_far_below_the_row_maximum():
    # Masked attention keys (-1e30) and entries a low tau pushes below exp's range are exactly
    # 0, never subnormal or NaN; a row with nothing allowed stays uniform, as torch's is.
    x = torch.tensor([[0.0, -1e30, -1.0, -2.0], [-1e30, -1e30, -1e30, -1e30]])
    y = softmax_at(x, 0.01)
    assert y[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert y[1].tolist() == [0.25] * 4
    torch.testing.assert_close(y, torch.softmax(x / 0.01, -1))


@pytest.mark.parametrize("noise", [False, True])
def test_straight_through_is_the_argmax_forward_and_the_softmax_back(noise):
    """Forward: exactly the one-hot argmax (of the same noisy logits the soft choice would use);
    back: the gradient of the soft choice."""
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    upstream = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(4))
    seed, tau = 5, 0.7
    soft = choose(x, Sampling(tau, torch.Generator().manual_seed(seed), noise))
    straight = choose(x, Sampling(tau, torch.Generator().manual_seed(seed), noise, True))
    assert torch.equal(straight, one_hot_argmax(soft.detach()))
    if not noise:
        assert torch.equal(straight, one_hot_argmax(x.detach()))
    (soft_grad,) = torch.autograd.grad((soft * upstream).sum(), x)
    (straight_grad,) = torch.autograd.grad((straight * upstream).sum(), x)
    torch.testing.assert_close(straight_grad, soft_grad)
    assert soft_grad.abs().max() > 0.01


def test_gumbel_noise_is_minus_log_minus_log_of_the_generators_uniforms_bit_for_bit():
    """Runs trained before the noise lost its last negation train the same way now: the noisy
    logits equal ``logits + -log(-log(u))`` exactly, for the same draws."""
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    noisy = with_gumbel_noise(logits, Sampling(0.5, torch.Generator().manual_seed(2)))
    uniform = torch.rand(64, 8, generator=torch.Generator().manual_seed(2))
    gumbel = uniform.clamp(min=1e-20, max=1.0 - 1e-7).log().neg().log().neg()
    assert torch.equal(noisy, logits + gumbel)


def test_importing_tprog_flushes_subnormals_in_every_thread():
    # Training time depends on it (subnormal arithmetic is 10-20x slower), and it must hold in
    # PyTorch's worker threads, which only copy the setting if it precedes them.
    code = (
        "import tprog, torch; torch.set_num_threads(2); "
        "x = torch.full((1 << 16,), 1e-30); "
        "print(int(((x * 1e-10) == 0).all()), int((x * 1e-10 != 0).sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0"]
