"""The soft gate of HAT training, sigmoid(s * e), with the paper's embedding-gradient compensation.

Serra et al. (2018) multiply the embedding gradient by smax/s * (cosh(s e) + 1) / (cosh(e) + 1), so
that embeddings learn at the same pace whatever the annealed scale s. Here that factor is part of
the gate's backward pass (a custom autograd function) instead of a hook on the parameter, so it
survives ``copy.deepcopy`` and needs no bookkeeping. Multiplied out, the gradient is

    d gate / d e = smax / (2 (cosh(e) + 1)) * (cosh(min(|s e|, c)) + 1) / (cosh(s e) + 1)

with c the cosh clamp (50): the last ratio is 1 for |s e| <= c and exp(c - |s e|) beyond, which is
computed in that form so that it never overflows.

Gates below GATE_FLOOR are sent forward as exact zeros: a nearly closed gate (sigmoid(-100) is
subnormal) would fill activations and their gradients with subnormal floats, which slow CPU matrix
products several times over. The embedding gradient is unaffected.
"""

from __future__ import annotations

import torch

GATE_FLOOR = 1e-12


class _CompensatedGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embedding: torch.Tensor, scale: float, smax: float, cosh_clamp: float) -> torch.Tensor:
        ctx.save_for_backward(embedding)
        ctx.scale, ctx.smax, ctx.cosh_clamp = scale, smax, cosh_clamp
        gate = torch.sigmoid(scale * embedding)
        return gate.masked_fill(gate < GATE_FLOOR, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (e,) = ctx.saved_tensors
        beyond = torch.clamp((ctx.scale * e).abs() - ctx.cosh_clamp, min=0.0)
        slope = ctx.smax / (2.0 * (torch.cosh(e) + 1.0)) * torch.exp(-beyond)
        return grad * slope, None, None, None


def apply_gate(x: torch.Tensor, gate: torch.Tensor, dim: int) -> torch.Tensor:
    """Multiply ``x`` by a per-unit gate vector along ``dim`` (broadcast over the other dims)."""
    shape = [1] * x.ndim
    shape[dim] = -1
    return x * gate.to(x.dtype).view(shape)


def soft_gate(embedding: torch.Tensor, scale: float, smax: float, cosh_clamp: float = 50.0) -> torch.Tensor:
    """sigmoid(scale * embedding) with the compensated gradient and the subnormal floor."""
    return _CompensatedGate.apply(embedding, float(scale), float(smax), float(cosh_clamp))
