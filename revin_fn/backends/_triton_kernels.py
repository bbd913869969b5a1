"""Triton kernels of the triton backend: normalize, its backward, the reverse and its backward.

Every kernel sees its tensor as ``(outer, T, inner)`` through strides: the axes before the time
axis, the time axis, the axes after it. One program takes one outer index and a block of
``BLOCK_I`` inner indices (1 when time is last), both counted by grid axis 0, so each
program owns whole instances and the reduction along time stays in registers. When an instance
fits in ``BLOCK_T`` steps the data is read once; otherwise a loop reads it in chunks
(statistics first, then the output).

Accuracy far from zero: every instance is shifted by its own first value before anything is
summed, and chunks are combined with Chan's update (mean and sum of squared deviations per
chunk, exact in registers), so no sum of raw squares ever cancels.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The most elements one program holds in registers (a tile of BLOCK_T x BLOCK_I).
MAX_TILE = 8192
# The fewest inner columns a program takes side by side when time is not last ("b t v"): 8
# float32 columns are a 32-byte memory segment.
MIN_COLUMNS = 8
EPS_MODES = {"clamp": 0, "add": 1, "add_std": 2}


def blocks(length: int, inner: int) -> tuple[int, int, int]:
    """``(BLOCK_T, BLOCK_I, num_warps)`` for instances of ``length`` steps, ``inner`` wide."""
    columns = 1 if inner == 1 else min(triton.next_power_of_2(inner), MIN_COLUMNS)
    block_t = min(triton.next_power_of_2(length), MAX_TILE // columns)
    block_i = 1 if inner == 1 else min(triton.next_power_of_2(inner), MAX_TILE // block_t)
    return block_t, block_i, 8 if block_t * block_i >= 4096 else 4


@triton.jit
def _program(inner, BLOCK_I: tl.constexpr):
    """The outer index and the inner columns of this program. Grid axis 0 counts both (outer
    index major): axes 1 and 2 allow only 65535 programs, fewer than a wide "t b v" needs."""
    pid = tl.program_id(0).to(tl.int64)
    blocks = tl.cdiv(inner, BLOCK_I)
    return pid // blocks, (pid % blocks) * BLOCK_I + tl.arange(0, BLOCK_I)


@triton.jit
def _steps(BLOCK_T: tl.constexpr):
    """A block of time indices in 64 bits: a step's offset ``t * stride`` passes 2**31 in
    instances of more than 2**31 elements, or of steps strided that far apart."""
    return tl.arange(0, BLOCK_T).to(tl.int64)


@triton.jit
def _variate(pid_o, cols, vdiv, V, VARIATE_OUTER: tl.constexpr):
    """Index into the (V,) affine vectors of each instance of the block."""
    if VARIATE_OUTER:
        return (pid_o // vdiv) % V + cols * 0
    return (cols // vdiv) % V


@triton.jit
def _scale(var, eps, EPS_MODE: tl.constexpr):
    """The eps rule of ``_reference.scale_from_variance``, NaN for a NaN variance and for a
    scale past the float32 range (as the reference: never a finite output from it)."""
    if EPS_MODE == 0:
        scale = tl.sqrt_rn(tl.maximum(var, eps, propagate_nan=tl.PropagateNan.ALL))
    elif EPS_MODE == 1:
        scale = tl.sqrt_rn(var + eps)
    else:
        scale = tl.where(var > 0, tl.sqrt_rn(tl.where(var > 0, var, 1.0)), 0.0) + eps
    return tl.where(scale == float("inf"), float("nan"), scale)


@triton.jit
def _affine(gamma_ptr, beta_ptr, vidx, cmask, eps, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr):
    """Guarded gamma (``sign(gamma) * max(|gamma|, eps)``, sign(0) = +1) and beta per column."""
    g = tl.full(vidx.shape, 1.0, tl.float32)
    b = tl.zeros(vidx.shape, tl.float32)
    if HAS_GAMMA:
        g = tl.load(gamma_ptr + vidx, mask=cmask, other=1.0).to(tl.float32)
        low = tl.minimum(g, -eps, propagate_nan=tl.PropagateNan.ALL)
        g = tl.where(g < 0, low, tl.maximum(g, eps, propagate_nan=tl.PropagateNan.ALL))
    if HAS_BETA:
        b = tl.load(beta_ptr + vidx, mask=cmask, other=0.0).to(tl.float32)
    return g, b


@triton.jit
def normalize_kernel(
    x_ptr, y_ptr, loc_ptr, var_ptr, gain_ptr, offset_ptr, gamma_ptr, beta_ptr,
    T, inner, sxo, sxt, sxi, V, vdiv, eps,
    VARIATE_OUTER: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
    EPS_MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, SINGLE: tl.constexpr,
):  # fmt: skip
    """y (contiguous, x's dtype) and the float32 loc, variance, gain and offset per instance."""
    pid_o, cols = _program(inner, BLOCK_I)
    cmask = cols < inner
    steps = _steps(BLOCK_T)
    x_base = x_ptr + pid_o * sxo + cols[None, :] * sxi
    y_base = y_ptr + pid_o * T * inner + cols[None, :]
    shift = tl.load(x_ptr + pid_o * sxo + cols * sxi, mask=cmask, other=0.0).to(tl.float32)
    if SINGLE:  # the whole instance in registers: one read, exact two-pass moments
        m = (steps[:, None] < T) & cmask[None, :]
        d = tl.where(
            m,
            tl.load(x_base + steps[:, None] * sxt, mask=m, other=0.0).to(tl.float32)
            - shift[None, :],
            0.0,
        )
        mean = tl.sum(d, axis=0) / T
        c = tl.where(m, d - mean[None, :], 0.0)
        var = tl.sum(c * c, axis=0) / T
    else:  # chunks combined with Chan's update
        mean = tl.zeros([BLOCK_I], tl.float32)
        m2 = tl.zeros([BLOCK_I], tl.float32)
        n = 0.0
        for start in range(0, T, BLOCK_T):
            t = start + steps
            m = (t[:, None] < T) & cmask[None, :]
            d = tl.where(
                m,
                tl.load(x_base + t[:, None] * sxt, mask=m, other=0.0).to(tl.float32)
                - shift[None, :],
                0.0,
            )
            nc = tl.minimum(T - start, BLOCK_T).to(tl.float32)
            mc = tl.sum(d, axis=0) / nc
            c = tl.where(m, d - mc[None, :], 0.0)
            total = n + nc
            delta = mc - mean
            mean = mean + delta * (nc / total)
            m2 = m2 + tl.sum(c * c, axis=0) + delta * delta * (n * nc / total)
            n = total
        var = m2 / T
    scale = _scale(var, eps, EPS_MODE)
    g, b = _affine(
        gamma_ptr,
        beta_ptr,
        _variate(pid_o, cols, vdiv, V, VARIATE_OUTER),
        cmask,
        eps,
        HAS_GAMMA,
        HAS_BETA,
    )
    factor = tl.div_rn(g, scale)
    if SINGLE:
        tl.store(
            y_base + steps[:, None] * inner,
            (c * factor[None, :] + b[None, :]).to(y_ptr.dtype.element_ty),
            mask=m,
        )
    else:
        for start in range(0, T, BLOCK_T):
            t = start + steps
            m = (t[:, None] < T) & cmask[None, :]
            v = tl.load(x_base + t[:, None] * sxt, mask=m, other=0.0).to(tl.float32)
            out = ((v - shift[None, :]) - mean[None, :]) * factor[None, :] + b[None, :]
            tl.store(y_base + t[:, None] * inner, out.to(y_ptr.dtype.element_ty), mask=m)
    stat = pid_o * inner + cols
    loc = shift + mean
    gain = tl.div_rn(scale, g)
    tl.store(loc_ptr + stat, loc, mask=cmask)
    tl.store(var_ptr + stat, var, mask=cmask)
    tl.store(gain_ptr + stat, gain, mask=cmask)
    tl.store(offset_ptr + stat, loc - b * gain, mask=cmask)


@triton.jit
def normalize_backward_kernel(
    x_ptr, gy_ptr, var_ptr, gamma_ptr, beta_ptr,
    gloc_ptr, gvar_ptr, ggain_ptr, goffset_ptr, dx_ptr, pgamma_ptr, pbeta_ptr,
    T, inner, sxo, sxt, sxi, sgo, sgt, sgi, V, vdiv, eps,
    VARIATE_OUTER: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
    HAS_GLOC: tl.constexpr, HAS_GVAR: tl.constexpr, HAS_GGAIN: tl.constexpr,
    HAS_GOFFSET: tl.constexpr, EPS_MODE: tl.constexpr, DETACH: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, SINGLE: tl.constexpr,
):  # fmt: skip
    """dx (contiguous, x's dtype) and per-instance partial gradients of guarded gamma and beta.

    With ``d = x - loc`` and ``s`` the scale: ``y = d g / s + b``, ``gain = s / g``,
    ``offset = loc - b gain``, ``loc = mean(x)``, ``var = mean(d^2)``; the gradients of all
    five outputs meet in ``dx = g gy / s + G_loc / T + 2 G_var d / T``. ``d`` is recomputed
    as the forward did (shifted by the first value, then centered), never as ``x - loc``: loc
    is rounded to its own magnitude, which can be many standard deviations.
    """
    pid_o, cols = _program(inner, BLOCK_I)
    cmask = cols < inner
    steps = _steps(BLOCK_T)
    stat = pid_o * inner + cols
    x_base = x_ptr + pid_o * sxo + cols[None, :] * sxi
    g_base = gy_ptr + pid_o * sgo + cols[None, :] * sgi
    shift = tl.load(x_ptr + pid_o * sxo + cols * sxi, mask=cmask, other=0.0).to(tl.float32)
    var = tl.load(var_ptr + stat, mask=cmask, other=1.0)
    scale = _scale(var, eps, EPS_MODE)
    g, b = _affine(
        gamma_ptr,
        beta_ptr,
        _variate(pid_o, cols, vdiv, V, VARIATE_OUTER),
        cmask,
        eps,
        HAS_GAMMA,
        HAS_BETA,
    )
    if SINGLE:  # the whole instance in registers: one read of x and gy
        m = (steps[:, None] < T) & cmask[None, :]
        gy = tl.load(g_base + steps[:, None] * sgt, mask=m, other=0.0).to(tl.float32)
        xs = tl.where(
            m,
            tl.load(x_base + steps[:, None] * sxt, mask=m, other=0.0).to(tl.float32)
            - shift[None, :],
            0.0,
        )
        mean = tl.sum(xs, axis=0) / T
        d = tl.where(m, xs - mean[None, :], 0.0)
        sum_gy = tl.sum(gy, axis=0)
        sum_gyd = tl.sum(gy * d, axis=0)
    else:
        sum_xs = tl.zeros([BLOCK_I], tl.float32)
        sum_gy = tl.zeros([BLOCK_I], tl.float32)
        sum_gyxs = tl.zeros([BLOCK_I], tl.float32)
        for start in range(0, T, BLOCK_T):
            t = start + steps
            m = (t[:, None] < T) & cmask[None, :]
            gy = tl.load(g_base + t[:, None] * sgt, mask=m, other=0.0).to(tl.float32)
            xs = tl.where(
                m,
                tl.load(x_base + t[:, None] * sxt, mask=m, other=0.0).to(tl.float32)
                - shift[None, :],
                0.0,
            )
            sum_xs += tl.sum(xs, axis=0)
            sum_gy += tl.sum(gy, axis=0)
            sum_gyxs += tl.sum(gy * xs, axis=0)
        mean = sum_xs / T
        sum_gyd = sum_gyxs - mean * sum_gy
    gain = tl.div_rn(scale, g)
    zero = tl.zeros([BLOCK_I], tl.float32)
    goffset = zero
    if HAS_GOFFSET:
        goffset = tl.load(goffset_ptr + stat, mask=cmask, other=0.0)
    g_gain = zero
    if HAS_GGAIN:
        g_gain = tl.load(ggain_ptr + stat, mask=cmask, other=0.0)
    g_gain = g_gain - b * goffset
    tl.store(pgamma_ptr + stat, sum_gyd / scale - g_gain * scale / (g * g), mask=cmask)
    tl.store(pbeta_ptr + stat, sum_gy - gain * goffset, mask=cmask)
    coef_gy = g / scale
    coef_1 = zero
    coef_d = zero
    if not DETACH:
        if EPS_MODE == 0:
            dscale = tl.where(var >= eps, 0.5 / scale, 0.0)
        elif EPS_MODE == 1:
            dscale = 0.5 / scale
        else:
            dscale = tl.where(var > 0, 0.5 / tl.sqrt_rn(tl.where(var > 0, var, 1.0)), 0.0)
        g_var = (g_gain / g - g * sum_gyd / (scale * scale)) * dscale
        if HAS_GVAR:
            g_var += tl.load(gvar_ptr + stat, mask=cmask, other=0.0)
        g_loc = goffset - g * sum_gy / scale
        if HAS_GLOC:
            g_loc += tl.load(gloc_ptr + stat, mask=cmask, other=0.0)
        coef_1 = g_loc / T
        coef_d = 2.0 * g_var / T
    dx_base = dx_ptr + pid_o * T * inner + cols[None, :]
    if SINGLE:
        dx = gy * coef_gy[None, :] + coef_1[None, :] + d * coef_d[None, :]
        tl.store(dx_base + steps[:, None] * inner, dx.to(dx_ptr.dtype.element_ty), mask=m)
    else:
        for start in range(0, T, BLOCK_T):
            t = start + steps
            m = (t[:, None] < T) & cmask[None, :]
            gy = tl.load(g_base + t[:, None] * sgt, mask=m, other=0.0).to(tl.float32)
            v = tl.load(x_base + t[:, None] * sxt, mask=m, other=0.0).to(tl.float32)
            d = (v - shift[None, :]) - mean[None, :]
            dx = gy * coef_gy[None, :] + coef_1[None, :] + d * coef_d[None, :]
            tl.store(dx_base + t[:, None] * inner, dx.to(dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def scale_shift_kernel(
    y_ptr, gain_ptr, offset_ptr, out_ptr, T, inner, syo, syt, syi, sgo, sgi, soo, soi,
    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    """``out = offset + y * gain`` (contiguous), float32 arithmetic; grid axis 1 splits time."""
    pid_o, cols = _program(inner, BLOCK_I)
    t = tl.program_id(1).to(tl.int64) * BLOCK_T + _steps(BLOCK_T)
    cmask = cols < inner
    m = (t[:, None] < T) & cmask[None, :]
    gain = tl.load(gain_ptr + pid_o * sgo + cols * sgi, mask=cmask, other=0.0).to(tl.float32)
    offset = tl.load(offset_ptr + pid_o * soo + cols * soi, mask=cmask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + pid_o * syo + t[:, None] * syt + cols[None, :] * syi, mask=m, other=0.0)
    out = offset[None, :] + y.to(tl.float32) * gain[None, :]
    out_base = out_ptr + pid_o * T * inner + cols[None, :]
    tl.store(out_base + t[:, None] * inner, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def scale_shift_backward_kernel(
    gout_ptr, y_ptr, gain_ptr, dy_ptr, dgain_ptr, doffset_ptr,
    T, inner, sgo, sgt, sgi, syo, syt, syi, sao, sai,
    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    """``dy = gout * gain`` and the per-instance sums of ``gout * y`` and ``gout``, one pass."""
    pid_o, cols = _program(inner, BLOCK_I)
    cmask = cols < inner
    steps = _steps(BLOCK_T)
    gain = tl.load(gain_ptr + pid_o * sao + cols * sai, mask=cmask, other=0.0).to(tl.float32)
    sum_g = tl.zeros([BLOCK_I], tl.float32)
    sum_gy = tl.zeros([BLOCK_I], tl.float32)
    for start in range(0, T, BLOCK_T):
        t = start + steps
        m = (t[:, None] < T) & cmask[None, :]
        gout = tl.load(
            gout_ptr + pid_o * sgo + t[:, None] * sgt + cols[None, :] * sgi, mask=m, other=0.0
        ).to(tl.float32)
        y = tl.load(
            y_ptr + pid_o * syo + t[:, None] * syt + cols[None, :] * syi, mask=m, other=0.0
        ).to(tl.float32)
        sum_g += tl.sum(gout, axis=0)
        sum_gy += tl.sum(gout * y, axis=0)
        dy = gout * gain[None, :]
        tl.store(
            dy_ptr + pid_o * T * inner + t[:, None] * inner + cols[None, :],
            dy.to(dy_ptr.dtype.element_ty),
            mask=m,
        )
    tl.store(dgain_ptr + pid_o * inner + cols, sum_gy, mask=cmask)
    tl.store(doffset_ptr + pid_o * inner + cols, sum_g, mask=cmask)
