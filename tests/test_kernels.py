"""The model's hand-written backward passes agree with autograd's own."""

import pytest
import torch

from tprog.model.layers import batched_matmul, read_vars


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
