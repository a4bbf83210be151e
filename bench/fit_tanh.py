"""Fits the rational tanh of csrc/gemm/simd.h and checks it in float32.

tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= 9, P and Q of degree 4 with Q(0) = 1,
fitted for relative error: a linearised least-squares fit reweighted by the
last denominator and, Lawson-style, by the last error, which drives it toward
the minimax fit. Prints the coefficients, the fit's relative error in exact
arithmetic, and the error in ulps of the float32 evaluation (NumPy float32,
without fused multiply-adds, as the portable level computes it).

    python bench/fit_tanh.py
"""
import numpy as np

DEG_P, DEG_Q, XMAX = 4, 4, 9.0


def fit(dp=DEG_P, dq=DEG_Q, xmax=XMAX, iters=200):
    x = np.sort(np.concatenate([np.linspace(1e-4, xmax, 20000), np.geomspace(1e-6, 1e-4, 200)]))
    s, t = x * x, np.tanh(x)
    q_last, lw = np.ones_like(x), np.ones_like(x)
    for _ in range(iters):
        # unknowns p_0..p_dp, q_1..q_dq; residual x P(s) - tanh(x) Q(s)
        A = np.hstack([np.stack([x * s**k for k in range(dp + 1)], 1),
                       np.stack([-t * s**k for k in range(1, dq + 1)], 1)])
        w = lw / np.abs(t * q_last)
        c, *_ = np.linalg.lstsq(A * w[:, None], t * w, rcond=None)
        p, q = c[:dp + 1], np.concatenate([[1.0], c[dp + 1:]])
        q_last = np.polynomial.polynomial.polyval(s, q)
        err = (x * np.polynomial.polynomial.polyval(s, p) / q_last - t) / t
        lw = lw * (np.abs(err) / np.abs(err).max() + 1e-3)
        lw /= lw.mean()
    return p, q, np.abs(err).max()


def float32_ulps(p, q, n=2_000_001):
    x = np.linspace(-12, 12, n).astype(np.float32)
    a = np.clip(x, np.float32(-XMAX), np.float32(XMAX))
    s = a * a
    P, Q = np.float32(p[-1]), np.float32(q[-1])
    for k in range(len(p) - 2, -1, -1):
        P = P * s + np.float32(p[k])
    for k in range(len(q) - 2, -1, -1):
        Q = Q * s + np.float32(q[k])
    y = np.clip(a * P / Q, -1, 1)
    t = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(t).astype(np.float32)).astype(np.float64)
    e = np.abs(y - t) / ulp
    return e.max(), x[np.argmax(e)]


if __name__ == "__main__":
    p, q, rel = fit()
    print("P (x^0, x^2, ...):", [float(v) for v in p])
    print("Q (x^0, x^2, ...):", [float(v) for v in q])
    print(f"relative error of the fit: {rel:.3g}")
    u, at = float32_ulps(p, q)
    print(f"float32 without FMA: at most {u:.2f} ulp (at x = {at:.4g})")
