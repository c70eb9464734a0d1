"""Math shared by every op's Triton kernels, as ``@triton.jit`` helpers inlined into the kernels that call them.

The numerics follow the torch side: :func:`softplus` is :func:`rawseq.kernels.common.softplus` (``log1p(exp(x))``,
linear above 20), so every backend discretizes ``dt`` the same way.

Two rules keep non-finite values where they belong. Masks select (``tl.where``) instead of multiplying by 0/1,
since ``0 * inf`` is NaN. And in backward kernels a gradient that is exactly zero stays zero whatever forward value
it meets (:func:`grad_mul`): positions the loss does not reach contribute nothing, even when their inputs are not
finite, so a NaN after position ``t`` never reaches the gradients of positions before ``t``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """log(1 + exp(x)) for x <= 20, x above (torch's threshold 20).

    ``tl`` has no log1p: log1p(e) is taken as ``log(u) * e / (u - 1)`` with ``u = 1 + e`` (exact where ``u``
    rounds), so small results for very negative ``x`` keep their value instead of rounding to 0.
    """
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    log1p_e = tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p_e)


@triton.jit
def softplus_grad(x):
    """d/dx softplus(x): sigmoid(x), and 1 above the threshold."""
    return tl.where(x > 20.0, 1.0, tl.sigmoid(x))


@triton.jit
def silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def silu_grad(x):
    """d/dx [x * sigmoid(x)]."""
    s = tl.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


@triton.jit
def grad_mul(g, v):
    """``g * v`` for a gradient ``g``, exactly 0 where ``g`` is 0 even if ``v`` is not finite."""
    return tl.where(g == 0.0, 0.0, g * v)


@triton.jit
def is_finite(x):
    """True where ``x`` is neither NaN nor +-inf."""
    return tl.abs(x.to(tl.float32)) < float("inf")


@triton.jit
def linear_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 then h -> a2 h + b2, for ``tl.associative_scan`` over a linear recurrence."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def adjoint_combine(a1, b1, a2, b2):
    """:func:`linear_combine` for a reverse scan of gradients (``b``): a zero gradient stays zero through any decay."""
    return a1 * a2, grad_mul(b1, a2) + b2


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """``tl.dot`` with fp32 accumulation. fp32 inputs: exact fp32 products with ``IEEE``, else TF32 tensor cores;
    fp16/bf16 inputs always take tensor cores and ignore ``IEEE``."""
    if IEEE:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c
