"""tprog: learn Transformer Programs and decompile them into exactly faithful Python programs."""

import torch

__version__ = "0.1.0"

# Subnormal floats (below ~1.2e-38) arise all over soft training at low temperature: products
# of near-zero probabilities, their gradients, Adam's squared gradients. The CPU computes with
# them 10-20x slower than with normal floats, which doubled the time of a training epoch.
# Flushing them to zero changes no result that matters (they are below float32's resolution
# of any quantity they are added to) and keeps every hard-mode value exact (0/1 and small
# integers). It is set on import because it is per thread: PyTorch's worker threads copy it
# when they start, which is at the first parallel operation, after this.
torch.set_flush_denormal(True)
