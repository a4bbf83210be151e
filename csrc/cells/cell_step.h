// One step of a cell for a batch, from Python's generation loops: weights are
// used in PyTorch's row-major layout as they are (no packing, which would cost
// as much as the step itself), with dot products along the contiguous K.
#pragma once
#include <omp.h>

#include "../sequence/context.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

template <class T>
inline T hsum(Vec<T> v) {
  T s = 0;
  for (int l = 0; l < kLanes<T>; ++l) s += v[l];  // fixed order: deterministic
  return s;
}

// out[b*ldo + j] = A[b] . W[j] (+ bias[j]) for rows j in [j0, j1); A [B, K], W [*, K].
template <class T>
void rows_dot(const T* A, int64_t B, const T* W, int64_t K, int64_t j0, int64_t j1, const T* bias, T* out,
              int64_t ldo) {
  constexpr int L = kLanes<T>, JB = 4;
  const int64_t kv = K / L * L;
  for (int64_t j = j0; j < j1; j += JB) {
    const int jb = int(std::min<int64_t>(JB, j1 - j));
    const T* w[JB];
    for (int q = 0; q < JB; ++q) w[q] = W + (j + std::min(q, jb - 1)) * K;
    for (int64_t b = 0; b < B; ++b) {
      const T* a = A + b * K;
      Vec<T> acc[JB] = {};
      for (int64_t k = 0; k < kv; k += L) {
        Vec<T> av = loadu(a + k);
#pragma GCC unroll 4
        for (int q = 0; q < JB; ++q) acc[q] += av * loadu(w[q] + k);
      }
      if (kv < K) {
        Vec<T> av = load_first(a + kv, int(K - kv));
        for (int q = 0; q < JB; ++q) acc[q] += av * load_first(w[q] + kv, int(K - kv));
      }
      for (int q = 0; q < jb; ++q) out[b * ldo + j + q] = hsum<T>(acc[q]) + (bias ? bias[j + q] : T(0));
    }
  }
}

template <class T>
void cell_step_impl(const CellStepArgs<T>& a, int nthreads) {
  constexpr int L = kLanes<T>;
  const int64_t B = a.B, I = a.I, H = a.H, G = gates_of(a.cell), N = G * H;
  if (B == 0) return;
  // gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh, [B, N] each
  AlignedBuffer<T> buf(size_t(2 * B * N + B * H + L));
  T *gi = buf.data(), *gh = gi + B * N, *rh = gh + B * N;
  AlignedBuffer<T> zeros;
  zeros.zero(size_t(B * H + L));
  const T* h = a.h ? a.h : zeros.data();
  const T* c = a.c ? a.c : zeros.data();
  const bool before = a.cell == CellKind::GruResetBefore;
  // (Whether a step splits at all is decided by the caller, sequence.cpp.)
  const int64_t units_per_chunk = L;
  const int64_t nchunks = (H + units_per_chunk - 1) / units_per_chunk;
  int nth = int(std::min<int64_t>(nthreads, nchunks));
#pragma omp parallel num_threads(nth)
  {
    int64_t c0, c1;
    split_range(nchunks, omp_get_num_threads(), omp_get_thread_num(), c0, c1);
    const int64_t ua = c0 * units_per_chunk, ub = std::min(c1 * units_per_chunk, H);
    for (int64_t g = 0; g < G && ua < ub; ++g) {
      rows_dot(a.x, B, a.W_ih, I, g * H + ua, g * H + ub, a.b_ih, gi, N);
      if (!(before && g == 2)) rows_dot(h, B, a.W_hh, H, g * H + ua, g * H + ub, a.b_hh, gh, N);
    }
    auto unit_loop = [&](auto body) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t u = ua; u < ub; u += L) body(b, u, std::min<int64_t>(L, ub - u));
    };
    auto ld = [&](const T* p, int64_t b, int64_t off, int64_t u, int n) {
      return n == L ? loadu(p + b * N + off + u) : load_first(p + b * N + off + u, n);
    };
    auto st = [&](T* p, int64_t ldp, int64_t b, int64_t off, int64_t u, int n, Vec<T> v) {
      if (n == L)
        storeu(p + b * ldp + off + u, v);
      else
        store_first(p + b * ldp + off + u, v, n);
    };
    auto hv = [&](const T* p, int64_t b, int64_t u, int n) {
      return n == L ? loadu(p + b * H + u) : load_first(p + b * H + u, n);
    };
    switch (a.cell) {
      case CellKind::Lstm:
        unit_loop([&](int64_t b, int64_t u, int n) {
          Vec<T> ig = sigmoid(ld(gi, b, 0, u, n) + ld(gh, b, 0, u, n));
          Vec<T> fg = sigmoid(ld(gi, b, H, u, n) + ld(gh, b, H, u, n));
          Vec<T> gg = tanh_approx(ld(gi, b, 2 * H, u, n) + ld(gh, b, 2 * H, u, n));
          Vec<T> og = sigmoid(ld(gi, b, 3 * H, u, n) + ld(gh, b, 3 * H, u, n));
          Vec<T> cn = fg * hv(c, b, u, n) + ig * gg;
          st(a.c_out, H, b, 0, u, n, cn);
          st(a.h_out, H, b, 0, u, n, og * tanh_approx(cn));
        });
        break;
      case CellKind::Gru:
        unit_loop([&](int64_t b, int64_t u, int n) {
          Vec<T> rg = sigmoid(ld(gi, b, 0, u, n) + ld(gh, b, 0, u, n));
          Vec<T> zg = sigmoid(ld(gi, b, H, u, n) + ld(gh, b, H, u, n));
          Vec<T> hn = ld(gh, b, 2 * H, u, n);
          Vec<T> ng = tanh_approx(ld(gi, b, 2 * H, u, n) + rg * hn);
          Vec<T> hp = hv(h, b, u, n);
          st(a.h_out, H, b, 0, u, n, ng + zg * (hp - ng));
        });
        break;
      case CellKind::GruResetBefore:
        unit_loop([&](int64_t b, int64_t u, int n) {
          Vec<T> rg = sigmoid(ld(gi, b, 0, u, n) + ld(gh, b, 0, u, n));
          st(rh, H, b, 0, u, n, rg * hv(h, b, u, n));
        });
        break;
      default:
        unit_loop([&](int64_t b, int64_t u, int n) {
          Vec<T> pre = ld(gi, b, 0, u, n) + ld(gh, b, 0, u, n);
          st(a.h_out, H, b, 0, u, n, a.cell == CellKind::RnnRelu ? relu<T>(pre) : tanh_approx(pre));
        });
    }
    if (before) {
      // n needs r*h of every unit: W_hn (r*h) after all threads wrote rh.
#pragma omp barrier
      if (ua < ub) rows_dot(rh, B, a.W_hh + 2 * H * H, H, ua, ub, a.b_hh ? a.b_hh + 2 * H : nullptr, gh + 2 * H, N);
      unit_loop([&](int64_t b, int64_t u, int n) {
        Vec<T> zg = sigmoid(ld(gi, b, H, u, n) + ld(gh, b, H, u, n));
        Vec<T> hn = ld(gh, b, 2 * H, u, n);
        Vec<T> ng = tanh_approx(ld(gi, b, 2 * H, u, n) + hn);
        Vec<T> hp = hv(h, b, u, n);
        st(a.h_out, H, b, 0, u, n, ng + zg * (hp - ng));
      });
    }
  }
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
