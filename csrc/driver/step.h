// One step of a cell for a batch, from Python's generation loops. Two paths:
// - cell_step: weights used in PyTorch's row-major layout as they are (no
//   packing, which would cost as much as the step itself), with dot products
//   along the contiguous K (pyrnn.LSTMCell and friends);
// - packed_step: weights packed once (pack_cell) into the GEMM's column panels,
//   so a step is the micro-kernel over x and h rows with no horizontal sums
//   (pyrnn's frozen cells).
// Both hand each vector of units to the cell's step() (csrc/cells/).
#pragma once
#include <omp.h>

#include "../cells/all.h"
#include "../gemm/lowp.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

template <class T>
inline T hsum(Vec<T> v) {
  T s = 0;
  for (int l = 0; l < kLanes<T>; ++l) s += v[l];  // fixed order: deterministic
  return s;
}

// The kLanes sums of the vectors v[0..kLanes) (clobbered): lane e of the result is
// 0 + v[e][0] + v[e][1] + ... in lane order, hsum's order, so the same bits; one
// in-register transpose and kLanes vector adds instead of kLanes scalar chains.
template <class T>
inline Vec<T> hsum_lanes(Vec<T>* v) {
  transpose_block<T>(v);
  Vec<T> s = Vec<T>{};
  for (int l = 0; l < kLanes<T>; ++l) s += v[l];
  return s;
}

// out[(b0+r)*ldo + j+q] = A[b0+r] . W[j+q] (+ bias) for BB batch rows and the JB weight rows w[q]
// (jb of them real): BB x JB accumulators, so that each weight vector loaded serves BB rows.
// Where BB*JB is a multiple of kLanes the sums are taken kLanes at a time (hsum_lanes); else
// one by one (hsum): the same bits.
template <class T, int BB, int JB>
inline void dot_block(const T* A, int64_t b0, const T* const* w, int jb, int64_t K, int64_t j, const T* bias,
                      T* out, int64_t ldo) {
  constexpr int L = kLanes<T>, NA = BB * JB;
  const int64_t kv = K / L * L;
  const T* a[BB];
  for (int r = 0; r < BB; ++r) a[r] = A + (b0 + r) * K;
  Vec<T> acc[NA] = {};
  for (int64_t k = 0; k < kv; k += L) {
    Vec<T> wv[JB];
    for (int q = 0; q < JB; ++q) wv[q] = loadu(w[q] + k);
    for (int r = 0; r < BB; ++r) {
      const Vec<T> av = loadu(a[r] + k);
      for (int q = 0; q < JB; ++q) acc[r * JB + q] += av * wv[q];
    }
  }
  if (kv < K) {
    const int n = int(K - kv);
    for (int r = 0; r < BB; ++r) {
      const Vec<T> av = load_first(a[r] + kv, n);
      for (int q = 0; q < JB; ++q) acc[r * JB + q] += av * load_first(w[q] + kv, n);
    }
  }
  if constexpr (NA % L == 0) {
    for (int g = 0; g < NA; g += L) {
      const Vec<T> s = hsum_lanes<T>(acc + g);
      for (int e = 0; e < L; ++e) {
        const int r = (g + e) / JB, q = (g + e) % JB;
        if (q < jb) out[(b0 + r) * ldo + j + q] = s[e] + (bias ? bias[j + q] : T(0));
      }
    }
  } else {
    for (int r = 0; r < BB; ++r)
      for (int q = 0; q < jb; ++q) out[(b0 + r) * ldo + j + q] = hsum<T>(acc[r * JB + q]) + (bias ? bias[j + q] : T(0));
  }
}

// out[b*ldo + j] = A[b] . W[j] (+ bias[j]) for rows j in [j0, j1); A [B, K], W [*, K]. Batch rows
// go in pairs (four with 32 registers) against four weight rows: one row at a time, each weight
// vector fed one FMA per load (LSTMCell B=64 I=65 H=128: a step 3x torch.nn's); a row left over
// takes the same four weight rows while they are in L1. With fewer rows than a pair (B=1, a
// generation loop) each row goes against JB1 weight rows: JB1 independent FMA chains, where four
// waited on the FMA's latency. Each output is the same sum in the same order either way (bitwise).
template <class T>
void rows_dot(const T* A, int64_t B, const T* W, int64_t K, int64_t j0, int64_t j1, const T* bias, T* out,
              int64_t ldo) {
  constexpr int JB = 4, BB = PYRNN_NREGS >= 32 ? 4 : 2, JB1 = std::max(kLanes<T>, 8);
  const int64_t paired = B / BB * BB;
  auto blocks = [&](auto jb_tag, auto body) {
    constexpr int N = decltype(jb_tag)::value;
    for (int64_t j = j0; j < j1; j += N) {
      const int jb = int(std::min<int64_t>(N, j1 - j));
      const T* w[N];
      for (int q = 0; q < N; ++q) w[q] = W + (j + std::min(q, jb - 1)) * K;
      body(w, jb, j);
    }
  };
  if (paired == 0) {
    blocks(std::integral_constant<int, JB1>{}, [&](const T* const* w, int jb, int64_t j) {
      for (int64_t b = 0; b < B; ++b) dot_block<T, 1, JB1>(A, b, w, jb, K, j, bias, out, ldo);
    });
    return;
  }
  blocks(std::integral_constant<int, JB>{}, [&](const T* const* w, int jb, int64_t j) {
    int64_t b = 0;
    for (; b < paired; b += BB) dot_block<T, BB, JB>(A, b, w, jb, K, j, bias, out, ldo);
    for (; b < B; ++b) dot_block<T, 1, JB>(A, b, w, jb, K, j, bias, out, ldo);
  });
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
          body(StepUnit<T>{gi, gh, h, c, a.h_out, a.c_out, extra, b, u, N, H, int(std::min<int64_t>(L, ub - u)), a.leak});
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

// ------------------------------------------------------------ packed weights --

// Column panels of W^T: panel q is [K][NR], its column n holding row
// row_of(q*NR + n) of a row-major W [*, K] (zeros for a negative row or a
// column at or past ncols).
template <class T, class RowOf>
void pack_column_panels(const T* W, int64_t K, int64_t ncols, int64_t NR, RowOf row_of, AlignedBuffer<T>& out) {
  const int64_t np = (ncols + NR - 1) / NR;
  out.reserve(size_t(std::max<int64_t>(1, np * K * NR)));
  T* o = out.data();
  constexpr int L = kLanes<T>;
  for (int64_t q = 0; q < np; ++q)
    for (int64_t n = 0; n < NR; n += L) {
      const T* rows[L];
      for (int v = 0; v < L; ++v) {
        const int64_t c = q * NR + n + v, row = c < ncols ? row_of(c) : -1;
        rows[v] = row >= 0 ? W + row * K : nullptr;
      }
      transpose_rows(rows, 0, K, o + q * K * NR + n, NR);
    }
}

// Rows [n0, n1) of W as column panels.
template <class T>
void pack_columns(const T* W, int64_t K, int64_t n0, int64_t n1, int64_t NR, AlignedBuffer<T>& out) {
  pack_column_panels(W, K, n1 - n0, NR, [n0](int64_t c) { return n0 + c; }, out);
}

// A gate-major W [G*H, K] as column panels in the input projection's layout,
// each gate group padded to Hp columns: column g*Hp + u is row g*H + u.
template <class T>
void pack_gate_columns(const T* W, int G, int64_t H, int64_t Hp, int64_t K, int64_t NR, AlignedBuffer<T>& out) {
  pack_column_panels(W, K, G * Hp, NR, [H, Hp](int64_t c) { return c % Hp < H ? c / Hp * H + c % Hp : -1; }, out);
}

// fp32 panels (np x [K][NR]) moved to `low` in a reduced precision (float only).
template <class T>
void lower_into(AlignedBuffer<T>& panels, int64_t np, int64_t K, int64_t NR, WeightPrecision prec, LowPanels& low) {
  if constexpr (std::is_same_v<T, float>) {
    if (prec == WeightPrecision::Same) return;
    lower_panels(panels.data(), np, K, NR, prec, low);
    panels = AlignedBuffer<T>();
  }
}

template <class T>
void pack_cell_impl(const CellStepArgs<T>& a, WeightPrecision prec, PackedCell<T>& p) {
  constexpr int64_t NR = kGemmNV * kLanes<T>;
  p.cell = a.cell, p.I = a.I, p.H = a.H, p.N = gates_of(a.cell) * a.H, p.NR = NR;
  with_cell(a.cell, false, [&](auto cell) { p.n_h = decltype(cell)::kStepHhGates * a.H; });
  pack_columns(a.W_ih, a.I, 0, p.N, NR, p.wx);
  pack_columns(a.W_hh, a.H, 0, p.n_h, NR, p.wh);
  if (p.n_h < p.N) pack_columns(a.W_hh, a.H, p.n_h, p.N, NR, p.wn);
  p.precision = std::is_same_v<T, float> ? prec : WeightPrecision::Same;
  lower_into(p.wx, (p.N + NR - 1) / NR, a.I, NR, p.precision, p.lx);
  lower_into(p.wh, (p.n_h + NR - 1) / NR, a.H, NR, p.precision, p.lh);
  lower_into(p.wn, (p.N - p.n_h + NR - 1) / NR, a.H, NR, p.precision, p.ln);
  p.b_ih.zero(size_t(p.N));
  p.b_hh.zero(size_t(p.N));
  if (a.b_ih) {
    std::memcpy(p.b_ih.data(), a.b_ih, sizeof(T) * size_t(p.N));
    std::memcpy(p.b_hh.data(), a.b_hh, sizeof(T) * size_t(p.N));
  }
}

// out[b][c] = tile + bias[c] for the columns of panels [q0, q1) below ncols
// and rows b < B, each tile [m][NR] of panel q and rows r0.. filled by
// fill(q, r0, m, tile).
template <class T, class Fill>
void panel_tiles(int64_t B, int64_t ncols, int64_t q0, int64_t q1, const T* bias, T* out, int64_t ldo, Fill fill) {
  constexpr int L = kLanes<T>, NV = kGemmNV, MR = tile_rows(NV);
  constexpr int64_t NR = NV * L;
  alignas(64) T tile[MR * NR];
  for (int64_t q = q0; q < q1; ++q)
    for (int64_t r0 = 0; r0 < B; r0 += MR) {
      const int m = int(std::min<int64_t>(MR, B - r0));
      fill(q, r0, m, tile);
      const int64_t c0 = q * NR, nc = std::min<int64_t>(NR, ncols - c0);
      for (int r = 0; r < m; ++r)
        for (int64_t j = 0; j < nc; j += L) {
          T* o = out + (r0 + r) * ldo + c0 + j;
          const int n = int(std::min<int64_t>(L, nc - j));
          Vec<T> v = loadu(tile + r * NR + j) + (n == L ? loadu(bias + c0 + j) : load_first(bias + c0 + j, n));
          if (n == L)
            storeu(o, v);
          else
            store_first(o, v, n);
        }
    }
}

// out[b][c] = A row b . column c of the panels + bias[c] (panel_tiles); arow(b)
// gives A's row b (K long).
template <class T, class ARow>
void panel_gemm(ARow arow, int64_t B, int64_t K, const T* panels, int64_t ncols, int64_t q0, int64_t q1, const T* bias,
                T* out, int64_t ldo) {
  constexpr int NV = kGemmNV, MR = tile_rows(NV);
  constexpr int64_t NR = NV * kLanes<T>;
  panel_tiles<T>(B, ncols, q0, q1, bias, out, ldo, [&](int64_t q, int64_t r0, int m, T* tile) {
    const T* arows[MR];
    for (int r = 0; r < MR; ++r) arows[r] = arow(r0 + std::min(r, m - 1));
    ukernel_rows<T, MR, NV, false>(m, K, nullptr, arows, panels + q * K * NR, tile);
  });
}

// panel_gemm with the weights in `prec`: the fp32 panels `w`, or `lw` lowered
// (float only), whose A rows are then prepared once for panels [q0, q1).
template <class T, class ARow>
void panel_product(WeightPrecision prec, const AlignedBuffer<T>& w, const LowPanels& lw, ARow arow, int64_t B,
                   int64_t K, int64_t ncols, int64_t q0, int64_t q1, const T* bias, T* out, int64_t ldo) {
  if (q0 >= q1) return;
  if constexpr (std::is_same_v<T, float>) {
    if (prec != WeightPrecision::Same) {
      constexpr int NV = kGemmNV, MR = low_tile_rows(NV);
      static_assert(MR == tile_rows(NV), "panel_tiles steps by tile_rows");
      LowRows a;
      a.prepare(prec, B, K, arow);
      panel_tiles<float>(B, ncols, q0, q1, bias, out, ldo,
                         [&](int64_t q, int64_t r0, int m, float* tile) { low_tile<MR, NV>(lw, q, a, r0, m, tile); });
      return;
    }
  }
  panel_gemm<T>(arow, B, K, w.data(), ncols, q0, q1, bias, out, ldo);
}

template <class T, class Cell>
void packed_step_cell(const PackedCell<T>& p, const CellStepArgs<T>& a, int nthreads) {
  constexpr int L = kLanes<T>;
  const int64_t B = a.B, I = p.I, H = p.H, N = p.N, NR = p.NR;
  if (B == 0) return;
  AlignedBuffer<T> buf(size_t(2 * B * N + B * H + L));
  T *gi = buf.data(), *gh = gi + B * N, *extra = gh + B * N;
  AlignedBuffer<T> zeros;
  if (!a.h || !a.c) zeros.zero(size_t(B * H + L));
  const T* h = a.h ? a.h : zeros.data();
  const T* c = a.c ? a.c : zeros.data();
  const int64_t npx = (N + NR - 1) / NR, nph = (p.n_h + NR - 1) / NR, npn = (N - p.n_h + NR - 1) / NR;
  const int64_t nchunks = (H + L - 1) / L;
  auto xrow = [&](int64_t r) { return a.x + r * I; };
  auto hrow = [&](int64_t r) { return h + r * H; };
  auto erow = [&](int64_t r) { return (const T*)extra + r * H; };
  auto body = [&](int tid, int nt) {
    int64_t q0, q1;
    split_range(npx + nph, nt, tid, q0, q1);  // the x and h panels, in one list
    panel_product(p.precision, p.wx, p.lx, xrow, B, I, N, q0, std::min(q1, npx), p.b_ih.data(), gi, N);
    panel_product(p.precision, p.wh, p.lh, hrow, B, H, p.n_h, std::max(q0, npx) - npx, q1 - npx, p.b_hh.data(), gh,
                  N);
    if (nt > 1) {
#pragma omp barrier
    }
    int64_t c0, c1;
    split_range(nchunks, nt, tid, c0, c1);
    const int64_t ua = c0 * L, ub = std::min(c1 * L, H);
    auto units = [&](auto fn) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t u = ua; u < ub; u += L)
          fn(StepUnit<T>{gi, gh, h, c, a.h_out, a.c_out, extra, b, u, N, H, int(std::min<int64_t>(L, ub - u)), a.leak});
    };
    units([](const StepUnit<T>& s) { Cell::step(s); });
    if constexpr (Cell::kStepHhGates < Cell::G) {
      // The remaining gates multiply the extra rows (GRU reset-before: W_hn (r*h)).
      if (nt > 1) {
#pragma omp barrier
      }
      split_range(npn, nt, tid, q0, q1);
      panel_product(p.precision, p.wn, p.ln, erow, B, H, N - p.n_h, q0, q1, p.b_hh.data() + p.n_h, gh + p.n_h, N);
      if (nt > 1) {
#pragma omp barrier
      }
      units([](const StepUnit<T>& s) { Cell::step_after(s); });
    }
  };
  const int nth = int(std::min<int64_t>(nthreads, std::min(npx + nph, nchunks)));
  if (nth <= 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(nth)
  body(omp_get_thread_num(), omp_get_num_threads());
}

template <class T>
void packed_step_impl(const PackedCell<T>& p, const CellStepArgs<T>& a, int nthreads) {
  with_cell(p.cell, false, [&](auto cell) { packed_step_cell<T, decltype(cell)>(p, a, nthreads); });
}

template <class T>
void cell_step_impl(const CellStepArgs<T>& a, int nthreads) {
  with_cell(a.cell, false, [&](auto cell) { cell_step_cell<T, decltype(cell)>(a, nthreads); });
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
