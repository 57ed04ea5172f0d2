"""The soft gate of HAT training, sigmoid(s * e), with the paper's embedding-gradient compensation.

Serra et al. (2018) multiply the embedding gradient by smax/s * (cosh(s e) + 1) / (cosh(e) + 1), so
that embeddings learn at the same pace whatever the annealed scale s. Multiplied out, the gradient is

    d gate / d e = smax / (2 (cosh(e) + 1)) * (cosh(min(|s e|, c)) + 1) / (cosh(s e) + 1)

with c the cosh clamp (50): the last ratio is 1 for |s e| <= c and exp(c - |s e|) beyond. The first
factor is the derivative of smax * sigmoid(e), so the gate is built from plain tensor operations:
its value is sigmoid(s e), its gradient that of ``smax * sigmoid(e) * exp(c - |s e|)`` with the last
factor held constant (a straight-through surrogate). No Python autograd Function, no host
synchronization: ``torch.compile`` traces it, and the gates of all groups are computed in one call on
one flat vector.

Gates below GATE_FLOOR are sent forward as exact zeros: a nearly closed gate (sigmoid(-100) is
subnormal) would fill activations and their gradients with subnormal floats, which slow CPU matrix
products several times over. The embedding gradient is unaffected.
"""

from __future__ import annotations

import torch

GATE_FLOOR = 1e-12


def apply_gate(x: torch.Tensor, gate: torch.Tensor, dim: int) -> torch.Tensor:
    """Multiply ``x`` by a per-unit gate vector along ``dim`` (broadcast over the other dims)."""
    shape = [1] * x.ndim
    shape[dim] = -1
    return x * gate.to(x.dtype).view(shape)


def soft_gate(embedding: torch.Tensor, scale: float, smax: float, cosh_clamp: float = 50.0) -> torch.Tensor:
    """sigmoid(scale * embedding) with the compensated gradient and the subnormal floor."""
    scaled = scale * embedding
    value = torch.sigmoid(scaled)
    value = value.masked_fill(value < GATE_FLOOR, 0.0)
    if not (torch.is_grad_enabled() and embedding.requires_grad):
        return value
    beyond = torch.clamp(scaled.detach().abs() - cosh_clamp, min=0.0)
    # sigmoid on the side where it is small, so autograd's y (1 - y) keeps full precision
    tail = torch.sigmoid(-embedding.abs())
    surrogate = smax * torch.where(embedding > 0, -tail, tail) * torch.exp(-beyond)
    return value.detach() + (surrogate - surrogate.detach())
