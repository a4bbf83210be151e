// One step of a cell for a batch, from Python's generation loops (pyrnn.LSTMCell
// and friends in eval mode, pyrnn.torch's cells without gradients): weights are
// used in PyTorch's row-major layout as they are (no packing, which would cost
// as much as the step itself), with dot products along the contiguous K.
#pragma once
#include <omp.h>

#include "../cells/all.h"

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

template <class T, class Cell>
void cell_step_cell(const CellStepArgs<T>& a, int nthreads) {
  constexpr int L = kLanes<T>, G = Cell::G;
  const int64_t B = a.B, I = a.I, H = a.H, N = G * H;
  if (B == 0) return;
  // gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh, [B, N] each; extra [B, H]
  AlignedBuffer<T> buf(size_t(2 * B * N + B * H + L));
  T *gi = buf.data(), *gh = gi + B * N, *extra = gh + B * N;
  AlignedBuffer<T> zeros;
  zeros.zero(size_t(B * H + L));
  const T* h = a.h ? a.h : zeros.data();
  const T* c = a.c ? a.c : zeros.data();
  // (Whether a step splits at all is decided by the caller, entry.cpp.)
  const int64_t nchunks = (H + L - 1) / L;
  const int nth = int(std::min<int64_t>(nthreads, nchunks));
#pragma omp parallel num_threads(nth)
  {
    int64_t c0, c1;
    split_range(nchunks, omp_get_num_threads(), omp_get_thread_num(), c0, c1);
    const int64_t ua = c0 * L, ub = std::min(c1 * L, H);
    for (int64_t g = 0; g < G && ua < ub; ++g) {
      rows_dot(a.x, B, a.W_ih, I, g * H + ua, g * H + ub, a.b_ih, gi, N);
      if (g < Cell::kStepHhGates) rows_dot(h, B, a.W_hh, H, g * H + ua, g * H + ub, a.b_hh, gh, N);
    }
    auto units = [&](auto body) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t u = ua; u < ub; u += L)
          body(StepUnit<T>{gi, gh, h, c, a.h_out, a.c_out, extra, b, u, N, H, int(std::min<int64_t>(L, ub - u))});
    };
    units([](const StepUnit<T>& s) { Cell::step(s); });
    if constexpr (Cell::kStepHhGates < G) {
      // The remaining gates multiply the extra rows (GRU reset-before: W_hn (r*h)),
      // which need every thread's units first.
#pragma omp barrier
      for (int64_t g = Cell::kStepHhGates; g < G && ua < ub; ++g)
        rows_dot(extra, B, a.W_hh + g * H * H, H, ua, ub, a.b_hh ? a.b_hh + g * H : nullptr, gh + g * H, N);
      units([](const StepUnit<T>& s) { Cell::step_after(s); });
    }
  }
}

template <class T>
void cell_step_impl(const CellStepArgs<T>& a, int nthreads) {
  with_cell(a.cell, false, [&](auto cell) { cell_step_cell<T, decltype(cell)>(a, nthreads); });
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
