// The time loop of one layer, one direction, for one ISA level.
//
// Forward: (1) the input projection x W_ih^T + b for all valid (t, b) rows as
// one GEMM before the loop; (2) per step, the recurrent GEMM h_{t-1} W_hh^T
// tile by tile with the cell's element-wise update applied to each tile while
// it is in L1 (cells.h). Threads own fixed blocks of hidden units with all
// their gates, so each keeps its slice of the packed W_hh in its own L2 for
// the whole sequence; the only synchronisation is one barrier per step (two
// for GRU reset-before, whose W_hn multiplies r*h).
//
// Backward: per step (last to first), the GEMM dh = dG_{t+1} W_hh for the
// thread's unit block, fused with the cell's gradient kernel that writes dG_t;
// one barrier per step. After the loop dx, dW_ih, dW_hh come from single
// GEMMs over all rows and db from column sums.
//
// Every output element is summed in a fixed order (k ascending in GEMMs, rows
// ascending in reductions), and work is split only over output elements, so
// results are bitwise identical for any thread count.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "../cells/cell_step.h"
#include "../cells/cells.h"
#include "context.h"
#include "dispatch.h"
#include "profile.h"

#define PYRNN_STR2(x) #x
#define PYRNN_STR(x) PYRNN_STR2(x)

namespace pyrnn {
namespace PYRNN_ISA_NS {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The call, for PYRNN_PROFILE lines (built only when profiling).
template <class T>
std::string describe_call(const ForwardArgs<T>& a, const Schedule& sc, const char* what, int nth) {
  if (!profile_enabled()) return {};
  static const char* names[] = {"rnn_tanh", "rnn_relu", "lstm", "gru", "gru_v3"};
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s %s %s B=%lld T=%lld I=%lld H=%lld threads=%d", PYRNN_STR(PYRNN_ISA_NS),
                names[int(a.cell)], what, (long long)sc.B, (long long)sc.T, (long long)a.I, (long long)a.H, nth);
  return buf;
}

// Panel for forward block j: [K][ng*HB], column gi*HB + v holds row
// (gates[gi], j*HB + v) of W ([G*nunits, K], zero beyond nunits).
template <class T>
void pack_forward_panel(const T* W, int64_t nunits, int64_t K, const int* gates, int ng, int64_t HB, int64_t j,
                        T* out) {
  const int64_t NR = ng * HB;
  for (int gi = 0; gi < ng; ++gi)
    for (int64_t v = 0; v < HB; ++v) {
      int64_t u = j * HB + v;
      const T* src = u < nunits ? W + (gates[gi] * nunits + u) * K : nullptr;
      T* o = out + gi * HB + v;
      for (int64_t k = 0; k < K; ++k) o[k * NR] = src ? src[k] : T(0);
    }
}

// Panel for backward block q: [ng*Kp][UB], row gi*Kp + u' holds W row
// (gates[gi], u') ([G*nrows, ncols]) restricted to columns q*UB.. (zero beyond
// nrows or ncols). Kp is the padded group width of the dG rows that multiply it.
template <class T>
void pack_backward_panel(const T* W, int64_t nrows, int64_t ncols, int64_t Kp, const int* gates, int ng, int64_t UB,
                         int64_t q, T* out) {
  for (int64_t k = 0; k < ng * Kp; ++k) {
    int64_t up = k % Kp;
    const T* src = up < nrows ? W + (gates[k / Kp] * nrows + up) * ncols : nullptr;
    for (int64_t n = 0; n < UB; ++n) {
      int64_t col = q * UB + n;
      out[k * UB + n] = (src && col < ncols) ? src[col] : T(0);
    }
  }
}

// x W_ih^T + bias for this thread's units [ua, ub) of every gate.
template <class T>
void project_inputs(FwdCtx<T>& f, int G, int64_t ua, int64_t ub, GemmScratch<T>& scratch) {
  if (ua >= ub) return;
  for (int g = 0; g < G; ++g) {
    int64_t c0 = g * f.Hp + ua;
    gemm<T>(f.sc.rows, ub - ua, f.I, AView<T>{f.xrows.data()}, BView<T>{f.wih_cols.data() + c0, false},
            CView<T>{nullptr, f.xp.data() + c0, f.ld_xp}, f.bias.data() + c0, false, scratch);
  }
}

// h_n for units [ua, ub) of h: each entry's output at its last valid step.
template <class T>
void write_final_h(FwdCtx<T>& f, int64_t ua, int64_t ub) {
  const Schedule& sc = f.sc;
  ub = std::min(ub, f.Ho);
  for (int64_t i = 0; ua < ub && i < sc.B; ++i)
    std::memcpy(f.a.h_n + sc.order[i] * f.Ho + ua, f.yrows[sc.offset[sc.len[i] - 1] + i] + ua,
                sizeof(T) * size_t(ub - ua));
}

// c_n for units [ua, ub) from the running state [B, Hp].
template <class T>
void write_final_c(FwdCtx<T>& f, int64_t ua, int64_t ub) {
  ub = std::min(ub, f.H);
  for (int64_t i = 0; ua < ub && i < f.sc.B; ++i)
    std::memcpy(f.a.c_n + f.sc.order[i] * f.H + ua, f.state.data() + i * f.Hp + ua, sizeof(T) * size_t(ub - ua));
}

// One step's recurrent GEMM over the active entries for one block, each tile
// handed to `epi(i0, m, tile)`. `arow(i)` gives the A row of entry i.
//
// With several row tiles, K is split into chunks whose slice of the panel
// (~16 KiB) stays in L1 while every row tile passes over it; the tiles wait
// in `acc` (ceil(n/MR)*MR*NR) between chunks. Otherwise each row tile would
// stream the whole panel, and its A rows, from L2.
template <class T, int MR, int NV, class ARow, class Epi>
inline void step_tiles(int64_t n, int64_t K, const T* panel, ARow arow, Epi epi, T* acc) {
  constexpr int64_t NR = NV * kLanes<T>;
  constexpr int64_t KC = std::max<int64_t>(16, (16 * 1024 / int64_t(NR * sizeof(T))) / 8 * 8);
  const T* arows[MR];
  auto rows_at = [&](int64_t r0, int m, int64_t k0) {
    for (int r = 0; r < MR; ++r) arows[r] = arow(r0 + std::min(r, m - 1)) + k0;
  };
  if (n <= MR || K <= KC) {
    for (int64_t r0 = 0; r0 < n; r0 += MR) {
      int m = int(std::min<int64_t>(MR, n - r0));
      rows_at(r0, m, 0);
      ukernel_rows<T, MR, NV, false>(m, K, nullptr, arows, panel, acc);
      epi(r0, m, acc);
    }
    return;
  }
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = std::min(KC, K - k0);
    for (int64_t r0 = 0; r0 < n; r0 += MR) {
      int m = int(std::min<int64_t>(MR, n - r0));
      rows_at(r0, m, k0);
      T* tile = acc + r0 * NR;
      if (k0 == 0)
        ukernel_rows<T, MR, NV, false>(m, kc, nullptr, arows, panel, tile);
      else
        ukernel_rows<T, MR, NV, false, true>(m, kc, nullptr, arows, panel + k0 * NR, tile);
    }
  }
  for (int64_t r0 = 0; r0 < n; r0 += MR) epi(r0, int(std::min<int64_t>(MR, n - r0)), acc + r0 * NR);
}

// Per-thread tile storage for step_tiles: B entries rounded up to MR rows.
template <class T>
T* tile_scratch(AlignedBuffer<T>& buf, int64_t B, int MR, int64_t NR) {
  buf.reserve(size_t(((B + MR - 1) / MR * MR) * NR));
  return buf.data();
}

// Calls epi(i, row, u, v) for every vector v of a tile (units u0.. below `limit`).
template <class T, int NV, class F>
inline void for_tile_vectors(const T* tile, int64_t off, int64_t i0, int m, int64_t u0, int64_t limit, F epi) {
  constexpr int L = kLanes<T>;
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < NV && u0 + c * L < limit; ++c)
      epi(i0 + r, off + i0 + r, u0 + c * L, loadu(tile + (r * NV + c) * L));
}

template <class T, class Cell, bool TRAIN>
void forward_one_phase(FwdCtx<T>& f, int nthreads) {
  constexpr int L = kLanes<T>, NV = Cell::G * Cell::kBlockVecs, MR = tile_rows(NV);
  constexpr int64_t HB = Cell::kBlockVecs * L, NR = NV * L;
  static constexpr int kGates[4] = {0, 1, 2, 3};
  const Schedule& sc = f.sc;
  const int64_t H = f.H, K = f.Ho, nblk = ceil_div(f.Hp, HB);
  f.panels.reserve(size_t(nblk * K * NR));
  const bool lstm = Cell::kSaved == 4 && !Cell::kDirectCarry;
  const int nth = int(std::min<int64_t>(nthreads, nblk));
  PhaseProfile prof(describe_call(f.a, sc, TRAIN ? "forward-train" : "forward-infer", nth), nth);
#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t j0, j1;
    split_range(nblk, nt, tid, j0, j1);
    for (int64_t j = j0; j < j1; ++j)
      pack_forward_panel(f.a.W_hh, H, K, kGates, Cell::G, HB, j, f.panels.data() + j * K * NR);
    prof.phase("pack");
    {
      GemmScratch<T> scratch;
      project_inputs(f, Cell::G, j0 * HB, std::min(j1 * HB, f.Hp), scratch);
    }
    prof.phase("input-proj");
    AlignedBuffer<T> tiles;
    T* acc = tile_scratch(tiles, sc.B, MR, NR);
    prof.loop_start(tid);
    for (int64_t s = 0; s < sc.S; ++s) {
      const int64_t off = sc.offset[s];
      for (int64_t j = j0; j < j1; ++j)
        step_tiles<T, MR, NV>(
            sc.active[s], K, f.panels.data() + j * K * NR, [&](int64_t i) { return f.arow[off + i]; },
            [&](int64_t i0, int m, const T* tile) {
              Cell::template forward_tile<T, TRAIN>(f, s, i0, m, j * HB, tile);
            },
            acc);
      const double tb = prof.before_barrier();
#pragma omp barrier
      prof.after_barrier(tid, tb);
    }
    prof.loop_end("loop", nt);
    write_final_h(f, j0 * HB, j1 * HB);
    if (lstm) write_final_c(f, j0 * HB, j1 * HB);
  }
}

// LSTM with a projection: phase 1 (blocks of H) computes c and m = o*tanh(c);
// after a barrier, phase 2 (blocks of P) computes h = W_hr m for the step.
template <class T, bool TRAIN>
void forward_lstm_projected(FwdCtx<T>& f, int nthreads) {
  constexpr int L = kLanes<T>, NV = 4, MR = tile_rows(NV), NVp = kGemmNV, MRp = tile_rows(NVp);
  constexpr int64_t NR = NV * L, PB = NVp * L;
  static constexpr int kGates[4] = {0, 1, 2, 3}, kOne[1] = {0};
  const Schedule& sc = f.sc;
  const int64_t H = f.H, P = f.Ho, nblk = ceil_div(f.Hp, L), nblk_p = ceil_div(P, PB);
  f.panels.reserve(size_t(nblk * P * NR));
  f.panels2.reserve(size_t(nblk_p * H * PB));
#pragma omp parallel num_threads(int(std::min<int64_t>(nthreads, std::max(nblk, nblk_p))))
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t j0, j1, q0, q1;
    split_range(nblk, nt, tid, j0, j1);
    split_range(nblk_p, nt, tid, q0, q1);
    for (int64_t j = j0; j < j1; ++j)
      pack_forward_panel(f.a.W_hh, H, P, kGates, 4, L, j, f.panels.data() + j * P * NR);
    for (int64_t q = q0; q < q1; ++q) pack_forward_panel(f.a.W_hr, P, H, kOne, 1, PB, q, f.panels2.data() + q * H * PB);
    {
      GemmScratch<T> scratch;
      project_inputs(f, 4, j0 * L, std::min(j1 * L, f.Hp), scratch);
    }
    AlignedBuffer<T> tiles;
    tile_scratch(tiles, sc.B, MR, NR);
    T* acc = tile_scratch(tiles, sc.B, MRp, PB);
    for (int64_t s = 0; s < sc.S; ++s) {
      const int64_t off = sc.offset[s], n = sc.active[s];
      for (int64_t j = j0; j < j1; ++j)
        step_tiles<T, MR, NV>(
            n, P, f.panels.data() + j * P * NR, [&](int64_t i) { return f.arow[off + i]; },
            [&](int64_t i0, int m, const T* tile) { LstmCell::forward_tile<T, TRAIN>(f, s, i0, m, j * L, tile); },
            acc);
#pragma omp barrier
      for (int64_t q = q0; q < q1; ++q)
        step_tiles<T, MRp, NVp>(
            n, H, f.panels2.data() + q * H * PB, [&](int64_t i) { return (const T*)f.m_row(off + i); },
            [&](int64_t i0, int m, const T* tile) {
              for_tile_vectors<T, NVp>(tile, off, i0, m, q * PB, P,
                                       [&](int64_t, int64_t row, int64_t u, Vec<T> h) { f.emit_h(row, u, h); });
            },
            acc);
#pragma omp barrier
    }
    write_final_h(f, q0 * PB, q1 * PB);
    write_final_c(f, j0 * L, j1 * L);
  }
}

template <class T, bool TRAIN>
void forward_gru_reset_before(FwdCtx<T>& f, int nthreads) {
  using Cell = GruResetBeforeCell;
  constexpr int L = kLanes<T>, MR1 = tile_rows(2), MR2 = tile_rows(1);
  static constexpr int kRz[2] = {0, 1}, kN[1] = {2};
  const Schedule& sc = f.sc;
  const int64_t H = f.H, nblk = ceil_div(f.Hp, L);
  f.panels.reserve(size_t(nblk * H * 2 * L));
  f.panels2.reserve(size_t(nblk * H * L));
#pragma omp parallel num_threads(int(std::min<int64_t>(nthreads, nblk)))
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t j0, j1;
    split_range(nblk, nt, tid, j0, j1);
    for (int64_t j = j0; j < j1; ++j) {
      pack_forward_panel(f.a.W_hh, H, H, kRz, 2, L, j, f.panels.data() + j * H * 2 * L);
      pack_forward_panel(f.a.W_hh, H, H, kN, 1, L, j, f.panels2.data() + j * H * L);
    }
    {
      GemmScratch<T> scratch;
      project_inputs(f, 3, j0 * L, std::min(j1 * L, f.Hp), scratch);
    }
    AlignedBuffer<T> tiles;
    tile_scratch(tiles, sc.B, MR1, 2 * L);
    T* acc = tile_scratch(tiles, sc.B, MR2, L);
    for (int64_t s = 0; s < sc.S; ++s) {
      const int64_t off = sc.offset[s], n = sc.active[s];
      for (int64_t j = j0; j < j1; ++j)
        step_tiles<T, MR1, 2>(
            n, H, f.panels.data() + j * H * 2 * L, [&](int64_t i) { return f.arow[off + i]; },
            [&](int64_t i0, int m, const T* tile) { Cell::forward_rz<T, TRAIN>(f, s, i0, m, j * L, tile); },
            acc);
#pragma omp barrier
      for (int64_t j = j0; j < j1; ++j)
        step_tiles<T, MR2, 1>(
            n, H, f.panels2.data() + j * H * L, [&](int64_t i) { return (const T*)f.rh_row(s, i); },
            [&](int64_t i0, int m, const T* tile) { Cell::forward_n<T, TRAIN>(f, s, i0, m, j * L, tile); },
            acc);
#pragma omp barrier
    }
    write_final_h(f, j0 * L, j1 * L);
  }
}

template <class T>
void forward_impl(const ForwardArgs<T>& a, Workspace<T>& w, bool training, int nthreads) {
  constexpr int L = kLanes<T>;
  const Schedule& sc = w.sched;
  if (sc.rows == 0) return;
  const int64_t H = a.H, Hp = ceil_div(H, L) * L, Ho = a.P ? a.P : H;
  const int G = gates_of(a.cell);
  FwdCtx<T> f(a, sc, training ? &w : nullptr, Hp);
  f.Ho = Ho;
  f.mask = a.h_mask;
  f.zeros.zero(size_t(std::max(Hp, Ho) + L));
  if (f.mask) {
    // h_{t-1} * mask per packed row: the recurrent GEMM's operand (and dW_hh's).
    f.ld_hm = good_ld<T>(ceil_div(Ho, L) * L);
    f.hm.reserve(size_t(sc.rows * f.ld_hm));
    f.h0m.zero(size_t(sc.B * f.ld_hm));
    if (a.h0)
      for (int64_t b = 0; b < sc.B; ++b)
        for (int64_t u = 0; u < Ho; ++u) f.h0m.data()[b * f.ld_hm + u] = a.h0[b * Ho + u] * a.h_mask[b * Ho + u];
  }
  if (a.P) {
    f.ld_m = good_ld<T>(Hp);
    f.m.reserve(size_t(sc.rows * f.ld_m));
  }
  fill_row_pointers<T>(f, sc, a.I, a.x, a.h0, a.y, f.zeros.data(), f.hm.data(), f.h0m.data(), f.ld_hm);
  f.wih_cols.assign(size_t(G * Hp), nullptr);
  for (int g = 0; g < G; ++g)
    for (int64_t u = 0; u < H; ++u) f.wih_cols[g * Hp + u] = a.W_ih + (g * H + u) * a.I;
  // Biases that can be added before the nonlinearity go into the projection;
  // GRU's b_hn stays apart because r multiplies it.
  f.bias.zero(size_t(G * Hp));
  f.b_hn.zero(size_t(Hp));
  if (a.b_ih)
    for (int g = 0; g < G; ++g)
      for (int64_t u = 0; u < H; ++u) {
        bool fold = !(a.cell == CellKind::Gru && g == 2);
        f.bias.data()[g * Hp + u] = a.b_ih[g * H + u] + (fold ? a.b_hh[g * H + u] : T(0));
        if (!fold) f.b_hn.data()[u] = a.b_hh[g * H + u];
      }
  f.ld_xp = good_ld<T>(G * Hp);
  f.xp.reserve(size_t(sc.rows * f.ld_xp));
  f.state.zero(size_t(sc.B * Hp));
  if (a.cell == CellKind::Lstm && a.c0)
    for (int64_t i = 0; i < sc.B; ++i)
      std::memcpy(f.state.data() + i * Hp, a.c0 + sc.order[i] * H, sizeof(T) * size_t(H));
  if (a.cell == CellKind::GruResetBefore && !training) f.rh.zero(size_t(sc.B * Hp));
  if (training) {
    w.Hp = Hp;
    int saved = a.cell == CellKind::Lstm || a.cell == CellKind::Gru ? 4 : a.cell == CellKind::GruResetBefore ? 3 : 0;
    w.ld_gates = good_ld<T>(saved * Hp);
    w.ld_extra = good_ld<T>(Hp);
    if (saved) w.gates.reserve(size_t(sc.rows * w.ld_gates));
    if (a.cell == CellKind::Lstm || a.cell == CellKind::GruResetBefore) w.extra.zero(size_t(sc.rows * w.ld_extra));
  }
  auto run = [&](auto train_tag) {
    constexpr bool TR = decltype(train_tag)::value;
    switch (a.cell) {
      case CellKind::Lstm:
        return a.P ? forward_lstm_projected<T, TR>(f, nthreads) : forward_one_phase<T, LstmCell, TR>(f, nthreads);
      case CellKind::Gru: return forward_one_phase<T, GruCell, TR>(f, nthreads);
      case CellKind::RnnTanh: return forward_one_phase<T, RnnCell<false>, TR>(f, nthreads);
      case CellKind::RnnRelu: return forward_one_phase<T, RnnCell<true>, TR>(f, nthreads);
      case CellKind::GruResetBefore: return forward_gru_reset_before<T, TR>(f, nthreads);
    }
  };
  if (training)
    run(std::true_type{});
  else
    run(std::false_type{});
  if (training) {  // backward reads these again
    w.hm = std::move(f.hm), w.h0m = std::move(f.h0m), w.ld_hm = f.ld_hm;
    w.m = std::move(f.m), w.ld_m = f.ld_m;
  }
}

// ---------------------------------------------------------------- backward --

// A weight-gradient GEMM after the loop: dW rows (gates `order`, nvalid rows
// each) = A^T B where A's columns are ng groups of gstride (a: column base,
// lda: row stride; dG or dh) and B the rows `brows` (x, h_{t-1}, ... per packed row).
template <class T>
struct WeightGradJob {
  const T* a;
  int64_t lda;
  int ng;
  const int* order;
  int64_t gstride, nvalid;
  const std::vector<const T*>* brows;
  T* dW;
  int64_t N;  // columns of dW
};

template <class T>
void weight_grad(BwdCtx<T>& b, const WeightGradJob<T>& job, int tid, int nt, GemmScratch<T>& s) {
  const int64_t M = job.ng * job.gstride;
  int64_t m0, m1;
  split_range(ceil_div(M, kGemmMR), nt, tid, m0, m1);
  m0 *= kGemmMR, m1 = std::min(M, m1 * kGemmMR);
  if (m0 >= m1) return;
  std::vector<T*> crows(size_t(m1 - m0));
  for (int64_t m = m0; m < m1; ++m) {
    int64_t up = m % job.gstride;
    crows[m - m0] = up < job.nvalid ? job.dW + (job.order[m / job.gstride] * job.nvalid + up) * job.N : nullptr;
  }
  AView<T> A{nullptr, job.a + m0, 1, job.lda};
  gemm<T>(m1 - m0, job.N, b.sc.rows, A, BView<T>{job.brows->data(), true}, CView<T>{crows.data()}, nullptr,
          false, s);
}

// dW for dG columns [col0, col0 + ng*Hp) (gate groups `order`) times `brows`.
template <class T>
WeightGradJob<T> gate_job(BwdCtx<T>& b, int64_t col0, int ng, const int* order, const std::vector<const T*>& brows,
                          T* dW, int64_t N) {
  return WeightGradJob<T>{b.dG.data() + col0, b.ld_dG, ng, order, b.Hp, b.H, &brows, dW, N};
}

// db over gate columns [col0, col0+ng*Hp): sums of dG over rows, in row order
// (rows outer, so dG is read sequentially).
template <class T>
void bias_grad(BwdCtx<T>& b, int64_t col0, int ng, const int* order, T* db, int tid, int nt) {
  constexpr int L = kLanes<T>;
  const int64_t Hp = b.Hp, H = b.H, nvec = ng * Hp / L;
  int64_t v0, v1;
  split_range(nvec, nt, tid, v0, v1);
  if (v0 >= v1) return;
  std::vector<Vec<T>> acc(size_t(v1 - v0), Vec<T>{});
  for (int64_t row = 0; row < b.sc.rows; ++row) {
    const T* p = b.dG.data() + row * b.ld_dG + col0;
    for (int64_t v = v0; v < v1; ++v) acc[v - v0] += loadu(p + v * L);
  }
  for (int64_t v = v0; v < v1; ++v) {
    int64_t k = v * L, g = k / Hp, up = k % Hp;
    store_h(db + order[g] * H, up, H, acc[v - v0]);
  }
}

// dx for this thread's rows: dG_ih W_ih.
template <class T>
void input_grad(BwdCtx<T>& b, int64_t col0, int ng, const int* order, int tid, int nt, GemmScratch<T>& s) {
  const int64_t Hp = b.Hp, H = b.H, rows = b.sc.rows;
  // Rows split in whole kGemmMR-row tiles: every row then lands in the same
  // tile whatever the thread count, and a tile of one row (a GEMV with four
  // partial sums) would sum in another order than a row of a taller tile.
  int64_t r0, r1;
  split_range(ceil_div(rows, kGemmMR), nt, tid, r0, r1);
  r0 *= kGemmMR, r1 = std::min(rows, r1 * kGemmMR);
  if (r0 >= r1) return;
  std::vector<const T*> arows(size_t(r1 - r0)), wrows(size_t(ng * Hp));
  std::vector<T*> crows(size_t(r1 - r0));
  for (int64_t r = r0; r < r1; ++r) {
    arows[r - r0] = b.dG.data() + r * b.ld_dG + col0;
    crows[r - r0] = b.g.dx + (b.sc.row_t[r] * b.sc.B + b.sc.row_b[r]) * b.I;
  }
  for (int64_t k = 0; k < ng * Hp; ++k)
    wrows[k] = k % Hp < H ? b.a.W_ih + (order[k / Hp] * H + k % Hp) * b.I : nullptr;
  gemm<T>(r1 - r0, b.I, ng * Hp, AView<T>{arows.data()}, BView<T>{wrows.data(), true}, CView<T>{crows.data()},
          nullptr, false, s);
}

// dL/dh_t for units u..u+L (Ho wide): the recurrent part (masked as h was),
// dy_t, the dh_n of entries whose last step is s, and the direct carry.
template <class T, bool DIRECT>
inline Vec<T> gather_dh(BwdCtx<T>& b, Vec<T> rec, int64_t i, int64_t row, int64_t u, bool last_step) {
  const Schedule& sc = b.sc;
  const int64_t Ho = b.Ho, bi = sc.row_b[row], t = sc.row_t[row];
  Vec<T> dh = b.masked(rec, bi, u);
  if (b.g.dy) dh += load_h(b.g.dy + (t * sc.B + bi) * Ho, u, Ho);
  if (last_step && b.g.dh_n) dh += load_h(b.g.dh_n + bi * Ho, u, Ho);
  if (DIRECT) dh += loadu(b.carry.data() + i * b.Hp + u);
  if (b.g.dh_seq) store_h(b.g.dh_seq + (t * sc.B + bi) * Ho, u, Ho, dh);
  return dh;
}

// Rows of dG (from column col0) for step s+1, or zeros for entries that end at s.
template <class T>
inline auto next_step_rows(BwdCtx<T>& b, int64_t s, int64_t col0) {
  const Schedule& sc = b.sc;
  const int64_t nn = s + 1 < sc.S ? sc.active[s + 1] : 0, offn = s + 1 < sc.S ? sc.offset[s + 1] : 0;
  return [&b, nn, offn, col0](int64_t i) { return i < nn ? (const T*)b.dG_row(offn + i) + col0 : b.zeros.data(); };
}

// dh0 = (dG_0 (hh columns) W_hh) * mask (+ carry when DIRECT) for units u0.. of block.
template <class T, int MR, int NV, bool DIRECT>
void initial_state_grad(BwdCtx<T>& b, int64_t K, int64_t col0, const T* panel, int64_t u0, int64_t limit, T* acc) {
  const Schedule& sc = b.sc;
  step_tiles<T, MR, NV>(
      sc.active[0], K, panel, [&](int64_t i) { return (const T*)b.dG_row(sc.offset[0] + i) + col0; },
      [&](int64_t i0, int m, const T* tile) {
        for_tile_vectors<T, NV>(tile, sc.offset[0], i0, m, u0, limit, [&](int64_t i, int64_t, int64_t u, Vec<T> v) {
          Vec<T> dh = b.masked(v, sc.order[i], u);
          if (DIRECT) dh += loadu(b.carry.data() + i * b.Hp + u);
          store_h(b.g.dh0 + sc.order[i] * b.Ho, u, b.Ho, dh);
        });
      },
      acc);
}

template <class T>
void init_carry(BwdCtx<T>& b, const T* from, int64_t ua, int64_t ub) {
  constexpr int L = kLanes<T>;
  for (int64_t i = 0; i < b.sc.B; ++i)
    for (int64_t u = ua; u < ub; u += L)
      storeu(b.carry.data() + i * b.Hp + u, from ? load_h(from + b.sc.order[i] * b.H, u, b.H) : Vec<T>{});
}

template <class T>
void copy_carry_out(BwdCtx<T>& b, T* to, int64_t ua, int64_t ub) {
  constexpr int L = kLanes<T>;
  for (int64_t i = 0; i < b.sc.B; ++i)
    for (int64_t u = ua; u < ub; u += L) store_h(to + b.sc.order[i] * b.H, u, b.H, loadu(b.carry.data() + i * b.Hp + u));
}

// After the loop: dx, dW_ih, dW_hh (times the recurrent GEMM's rows) and db.
template <class T, class Cell>
void parameter_grads(BwdCtx<T>& b, int tid, int nt, PhaseProfile& prof) {
  GemmScratch<T> scratch;
  const int64_t Hp = b.Hp, ih0 = Cell::kIhOff * Hp, hh0 = Cell::kHhOff * Hp;
  input_grad(b, ih0, Cell::kHhGroups, Cell::kIhOrder, tid, nt, scratch);
  prof.phase("dx");
  weight_grad(b, gate_job(b, ih0, Cell::kHhGroups, Cell::kIhOrder, b.xrows, b.g.dW_ih, b.I), tid, nt, scratch);
  prof.phase("dW_ih");
  weight_grad(b, gate_job(b, hh0, Cell::kHhGroups, Cell::kHhOrder, b.arow, b.g.dW_hh, b.Ho), tid, nt, scratch);
  prof.phase("dW_hh");
  if (b.g.db_ih) bias_grad(b, ih0, Cell::kHhGroups, Cell::kIhOrder, b.g.db_ih, tid, nt);
  if (b.g.db_hh) bias_grad(b, hh0, Cell::kHhGroups, Cell::kHhOrder, b.g.db_hh, tid, nt);
  prof.phase("db");
}

template <class T, class Cell>
void backward_one_phase(BwdCtx<T>& b, int nthreads) {
  constexpr int NV = kGemmNV, MR = tile_rows(NV);
  constexpr int64_t UB = NV * kLanes<T>;
  const Schedule& sc = b.sc;
  const int64_t Hp = b.Hp, hh0 = Cell::kHhOff * Hp, K = Cell::kHhGroups * Hp, nblk = ceil_div(Hp, UB);
  b.panels.reserve(size_t(nblk * K * UB));
  constexpr bool kLstm = Cell::kSaved == 4 && !Cell::kDirectCarry;
  const int nth = int(std::min<int64_t>(nthreads, nblk));
  PhaseProfile prof(describe_call(b.a, sc, "backward", nth), nth);
#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t q0, q1;
    split_range(nblk, nt, tid, q0, q1);
    const int64_t ua = q0 * UB, ub = std::min(q1 * UB, Hp);
    for (int64_t q = q0; q < q1; ++q)
      pack_backward_panel(b.a.W_hh, b.H, b.Ho, Hp, Cell::kHhOrder, Cell::kHhGroups, UB, q,
                          b.panels.data() + q * K * UB);
    init_carry(b, kLstm ? b.g.dc_n : nullptr, ua, ub);
    AlignedBuffer<T> tiles;
    T* acc = tile_scratch(tiles, sc.B, MR, UB);
    prof.phase("pack");
    prof.loop_start(tid);
    for (int64_t s = sc.S - 1; s >= 0; --s) {
      const int64_t off = sc.offset[s], nn = s + 1 < sc.S ? sc.active[s + 1] : 0;
      for (int64_t q = q0; q < q1; ++q)
        step_tiles<T, MR, NV>(
            sc.active[s], K, b.panels.data() + q * K * UB, next_step_rows(b, s, hh0),
            [&](int64_t i0, int m, const T* tile) {
              for_tile_vectors<T, NV>(tile, off, i0, m, q * UB, Hp, [&](int64_t i, int64_t row, int64_t u, Vec<T> v) {
                Cell::backward_unit(b, s, i, row, u, gather_dh<T, Cell::kDirectCarry>(b, v, i, row, u, i >= nn));
              });
            },
            acc);
      const double tb = prof.before_barrier();
#pragma omp barrier
      prof.after_barrier(tid, tb);
    }
    prof.loop_end("loop", nt);
    for (int64_t q = q0; q < q1; ++q)
      initial_state_grad<T, MR, NV, Cell::kDirectCarry>(b, K, hh0, b.panels.data() + q * K * UB, q * UB, Hp, acc);
    if (kLstm && b.g.dc0) copy_carry_out(b, b.g.dc0, ua, ub);
    prof.phase("dh0");
    // dG is complete since the last step's barrier.
    parameter_grads<T, Cell>(b, tid, nt, prof);
  }
}

// LSTM with a projection. Per step: phase A (blocks of P) dh_t = dG_{t+1} W_hh
// + dy_t (+ dh_n), kept per row for dW_hr; after a barrier, phase B (blocks
// of H) dm_t = dh_t W_hr and the LSTM gradient kernel with dm in place of dh.
template <class T>
void backward_lstm_projected(BwdCtx<T>& b, int nthreads) {
  constexpr int L = kLanes<T>, NV = kGemmNV, MR = tile_rows(NV);
  constexpr int64_t UB = NV * L;
  static constexpr int kOne[1] = {0};
  const Schedule& sc = b.sc;
  const int64_t Hp = b.Hp, P = b.Ho, Pp = ceil_div(P, L) * L, K = 4 * Hp;
  const int64_t nblk_p = ceil_div(Pp, UB), nblk = ceil_div(Hp, UB);
  b.panels.reserve(size_t(nblk_p * K * UB));
  b.panels2.reserve(size_t(nblk * P * UB));
  b.ld_dh = good_ld<T>(Pp);
  b.dh.reserve(size_t(sc.rows * b.ld_dh));
  std::vector<const T*> mrows(size_t(sc.rows));
  for (int64_t r = 0; r < sc.rows; ++r) mrows[r] = b.ws.m.data() + r * b.ws.ld_m;
#pragma omp parallel num_threads(int(std::min<int64_t>(nthreads, std::max(nblk, nblk_p))))
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t q0, q1, j0, j1;
    split_range(nblk_p, nt, tid, q0, q1);
    split_range(nblk, nt, tid, j0, j1);
    for (int64_t q = q0; q < q1; ++q)
      pack_backward_panel(b.a.W_hh, b.H, P, Hp, LstmCell::kHhOrder, 4, UB, q, b.panels.data() + q * K * UB);
    for (int64_t j = j0; j < j1; ++j) pack_backward_panel(b.a.W_hr, P, b.H, P, kOne, 1, UB, j, b.panels2.data() + j * P * UB);
    init_carry(b, b.g.dc_n, j0 * UB, std::min(j1 * UB, Hp));
    AlignedBuffer<T> tiles;
    T* acc = tile_scratch(tiles, sc.B, MR, UB);
    for (int64_t s = sc.S - 1; s >= 0; --s) {
      const int64_t off = sc.offset[s], n = sc.active[s], nn = s + 1 < sc.S ? sc.active[s + 1] : 0;
      for (int64_t q = q0; q < q1; ++q)
        step_tiles<T, MR, NV>(
            n, K, b.panels.data() + q * K * UB, next_step_rows(b, s, 0),
            [&](int64_t i0, int m, const T* tile) {
              for_tile_vectors<T, NV>(tile, off, i0, m, q * UB, Pp, [&](int64_t i, int64_t row, int64_t u, Vec<T> v) {
                storeu(b.dh.data() + row * b.ld_dh + u, gather_dh<T, false>(b, v, i, row, u, i >= nn));
              });
            },
            acc);
#pragma omp barrier
      for (int64_t j = j0; j < j1; ++j)
        step_tiles<T, MR, NV>(
            n, P, b.panels2.data() + j * P * UB, [&](int64_t i) { return (const T*)b.dh.data() + (off + i) * b.ld_dh; },
            [&](int64_t i0, int m, const T* tile) {
              for_tile_vectors<T, NV>(tile, off, i0, m, j * UB, Hp, [&](int64_t i, int64_t row, int64_t u, Vec<T> v) {
                LstmCell::backward_unit(b, s, i, row, u, v);
              });
            },
            acc);
#pragma omp barrier
    }
    for (int64_t q = q0; q < q1; ++q)
      initial_state_grad<T, MR, NV, false>(b, K, 0, b.panels.data() + q * K * UB, q * UB, Pp, acc);
    if (b.g.dc0) copy_carry_out(b, b.g.dc0, j0 * UB, std::min(j1 * UB, Hp));
    PhaseProfile off("", 0, false);  // (not profiled)
    parameter_grads<T, LstmCell>(b, tid, nt, off);
    GemmScratch<T> scratch;
    weight_grad(b, WeightGradJob<T>{b.dh.data(), b.ld_dh, 1, kOne, P, P, &mrows, b.g.dW_hr, b.H}, tid, nt, scratch);
  }
}

template <class T>
void backward_gru_reset_before(BwdCtx<T>& b, int nthreads) {
  using Cell = GruResetBeforeCell;
  constexpr int NV = kGemmNV, MR = tile_rows(NV);
  constexpr int64_t UB = NV * kLanes<T>;
  static constexpr int kRz[2] = {0, 1}, kN[1] = {2}, kRzn[3] = {0, 1, 2};
  const Schedule& sc = b.sc;
  const int64_t Hp = b.Hp, nblk = ceil_div(Hp, UB);
  b.panels.reserve(size_t(nblk * 2 * Hp * UB));
  b.panels2.reserve(size_t(nblk * Hp * UB));
  std::vector<const T*> rh_rows(size_t(sc.rows));
  for (int64_t r = 0; r < sc.rows; ++r) rh_rows[r] = b.ws.extra_row(r);
#pragma omp parallel num_threads(int(std::min<int64_t>(nthreads, nblk)))
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t q0, q1;
    split_range(nblk, nt, tid, q0, q1);
    const int64_t ua = q0 * UB, ub = std::min(q1 * UB, Hp);
    for (int64_t q = q0; q < q1; ++q) {
      pack_backward_panel(b.a.W_hh, b.H, b.H, Hp, kRz, 2, UB, q, b.panels.data() + q * 2 * Hp * UB);
      pack_backward_panel(b.a.W_hh, b.H, b.H, Hp, kN, 1, UB, q, b.panels2.data() + q * Hp * UB);
    }
    init_carry<T>(b, nullptr, ua, ub);
    AlignedBuffer<T> tiles;
    T* acc = tile_scratch(tiles, sc.B, MR, UB);
    for (int64_t s = sc.S - 1; s >= 0; --s) {
      const int64_t off = sc.offset[s], nn = s + 1 < sc.S ? sc.active[s + 1] : 0;
      for (int64_t q = q0; q < q1; ++q)
        step_tiles<T, MR, NV>(
            sc.active[s], 2 * Hp, b.panels.data() + q * 2 * Hp * UB, next_step_rows(b, s, 0),
            [&](int64_t i0, int m, const T* tile) {
              for_tile_vectors<T, NV>(tile, off, i0, m, q * UB, Hp, [&](int64_t i, int64_t row, int64_t u, Vec<T> v) {
                Cell::backward_zn(b, i, row, u, gather_dh<T, true>(b, v, i, row, u, i >= nn));
              });
            },
            acc);
#pragma omp barrier
      for (int64_t q = q0; q < q1; ++q)
        step_tiles<T, MR, NV>(
            sc.active[s], Hp, b.panels2.data() + q * Hp * UB,
            [&](int64_t i) { return (const T*)b.dG_row(off + i) + 2 * Hp; },
            [&](int64_t i0, int m, const T* tile) {
              for_tile_vectors<T, NV>(tile, off, i0, m, q * UB, Hp, [&](int64_t i, int64_t row, int64_t u, Vec<T> v) {
                Cell::backward_r(b, i, row, u, v);
              });
            },
            acc);
#pragma omp barrier
    }
    for (int64_t q = q0; q < q1; ++q)
      initial_state_grad<T, MR, NV, true>(b, 2 * Hp, 0, b.panels.data() + q * 2 * Hp * UB, q * UB, Hp, acc);
    GemmScratch<T> scratch;
    input_grad(b, 0, 3, kRzn, tid, nt, scratch);
    weight_grad(b, gate_job(b, 0, 3, kRzn, b.xrows, b.g.dW_ih, b.I), tid, nt, scratch);
    weight_grad(b, gate_job(b, 0, 2, kRz, b.arow, b.g.dW_hh, b.H), tid, nt, scratch);
    weight_grad(b, gate_job(b, 2 * Hp, 1, kN, rh_rows, b.g.dW_hh, b.H), tid, nt, scratch);
    if (b.g.db_ih) bias_grad(b, 0, 3, kRzn, b.g.db_ih, tid, nt);
    if (b.g.db_hh) bias_grad(b, 0, 3, kRzn, b.g.db_hh, tid, nt);
  }
}

template <class T>
void backward_impl(const Workspace<T>& w, const ForwardArgs<T>& a, const BackwardArgs<T>& g, int nthreads) {
  constexpr int L = kLanes<T>;
  BwdCtx<T> b(a, g, w);
  const Schedule& sc = w.sched;
  if (sc.rows == 0) return;
  const int64_t Hp = w.Hp;
  b.Ho = a.P ? a.P : a.H;
  b.mask = a.h_mask;
  int grad_groups = a.cell == CellKind::Lstm || a.cell == CellKind::Gru ? 4 : a.cell == CellKind::GruResetBefore ? 3 : 1;
  b.zeros.zero(size_t(std::max(grad_groups * Hp, b.Ho) + L));
  fill_row_pointers<T>(b, sc, a.I, a.x, a.h0, a.y, b.zeros.data(), w.hm.data(), w.h0m.data(), w.ld_hm);
  b.ld_dG = good_ld<T>(grad_groups * Hp);
  b.dG.reserve(size_t(sc.rows * b.ld_dG));
  b.carry.zero(size_t(sc.B * Hp));
  switch (a.cell) {
    case CellKind::Lstm:
      return a.P ? backward_lstm_projected<T>(b, nthreads) : backward_one_phase<T, LstmCell>(b, nthreads);
    case CellKind::Gru: return backward_one_phase<T, GruCell>(b, nthreads);
    case CellKind::RnnTanh: return backward_one_phase<T, RnnCell<false>>(b, nthreads);
    case CellKind::RnnRelu: return backward_one_phase<T, RnnCell<true>>(b, nthreads);
    case CellKind::GruResetBefore: return backward_gru_reset_before<T>(b, nthreads);
  }
}

// Register-only FMA chains: the machine's fp32 roofline for this ISA.
inline double fma_peak_gflops(int nthreads, double seconds) {
  constexpr int L = kLanes<float>, kChains = 12;
  double flops = 0, t0 = omp_get_wtime(), t1 = t0;
  float sink = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : flops, sink)
  {
    Vec<float> acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = bcast(float(c) * 1e-3f);
    const Vec<float> mul = bcast(0.9999999f), add = bcast(1e-7f);
    double start = omp_get_wtime();
    long iters = 0;
    do {
      for (int rep = 0; rep < 100000; ++rep)
#pragma GCC unroll 12
        for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * mul + add;
      iters += 100000;
    } while (omp_get_wtime() - start < seconds);
    flops += double(iters) * kChains * L * 2;
    for (int c = 0; c < kChains; ++c)
      for (int l = 0; l < L; ++l) sink += acc[c][l];
  }
  t1 = omp_get_wtime();
  if (sink == 12345.678f) flops += 1;  // keeps the chains alive
  return flops / (t1 - t0) / 1e9;
}

inline const KernelTable& make_table() {
  static const KernelTable table{&forward_impl<float>,   &forward_impl<double>,   &backward_impl<float>,
                                 &backward_impl<double>, &fma_peak_gflops,        &cell_step_impl<float>,
                                 &cell_step_impl<double>};
  return table;
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
