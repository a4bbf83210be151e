// The driver: the time loop of one layer, one direction, for one ISA level,
// the same skeleton for every cell. A cell (csrc/cells/) gives its traits and
// the phases of one step; the driver packs each phase's weights, runs the
// input projection, loops over the steps and computes the gradients after the
// loop.
//
// Forward: (1) the input projection x W_ih^T + b for all valid (t, b) rows as
// one GEMM before the loop; (2) per step and phase, a GEMM of the step's A
// rows (h_{t-1} for the first phase) with the phase's packed weights, tile by
// tile, with the cell's element-wise update applied to each tile while it is
// in L1. Threads own fixed blocks of units with all their gates, so each keeps
// its slice of the packed weights in its own L2 for the whole sequence; the
// only synchronisation is one barrier per phase and step.
//
// Backward: per step (last to first) and phase, the GEMM of dG_{t+1} (first
// phase) with the phase's weights for the thread's unit block, fused with the
// cell's gradient code that writes dG_t; one barrier per phase and step.
// After the loop dx, dW_ih, dW_hh (dW_hr) come from single GEMMs over all
// rows and db from column sums.
//
// Every output element is summed in a fixed order (k ascending in GEMMs, rows
// ascending in reductions), and work is split only over output elements, so
// results are bitwise identical for any thread count.
//
// PYRNN_PROFILE=1 prints each call's phases (runtime/profile.h).
#pragma once
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <utility>

#include "../cells/all.h"
#include "../gemm/roofline.h"
#include "../runtime/profile.h"
#include "kernel_table.h"
#include "step.h"

#define PYRNN_STR2(x) #x
#define PYRNN_STR(x) PYRNN_STR2(x)

namespace pyrnn {
namespace PYRNN_ISA_NS {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The call, for PYRNN_PROFILE lines (built only when profiling).
template <class T>
std::string describe_call(const ForwardArgs<T>& a, const Schedule& sc, const char* what, int nth) {
  if (!profile_enabled()) return {};
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s %s%s %s B=%lld T=%lld I=%lld H=%lld threads=%d", PYRNN_STR(PYRNN_ISA_NS),
                cell_info(a.cell).name, a.P ? "+projection" : "", what, (long long)sc.B, (long long)sc.T,
                (long long)a.I, (long long)a.H, nth);
  return buf;
}

// Panel for forward block j: [K][ng*HB], column gi*HB + v holds row
// (gates[gi], j*HB + v) of W ([G*nunits, K], zero beyond nunits), in
// lanes-wide column groups (transpose_rows).
template <class T>
void pack_forward_panel(const T* W, int64_t nunits, int64_t K, const int* gates, int ng, int64_t HB, int64_t j,
                        T* out) {
  constexpr int L = kLanes<T>;
  const int64_t NR = ng * HB;
  for (int gi = 0; gi < ng; ++gi)
    for (int64_t v0 = 0; v0 < HB; v0 += L) {
      const T* rows[L];
      for (int v = 0; v < L; ++v) {
        const int64_t u = j * HB + v0 + v;
        rows[v] = u < nunits ? W + (gates[gi] * nunits + u) * K : nullptr;
      }
      transpose_rows(rows, 0, K, out + gi * HB + v0, NR);
    }
}

// Panels for backward blocks [q0, q1), panel q at panel_of(q): [ng*Kp][UB], row
// gi*Kp + u' holds W row (gates[gi], u') ([G*nrows, ncols]) restricted to
// columns q*UB.. (zero beyond nrows or ncols). Kp is the padded group width of
// the dG rows that multiply it. Each W row is read once, whole, its UB-wide
// pieces copied into the panels: the LSTM's W_hh at H=512 (4 MiB) took 3.7 ms
// per call packed block by block, element by element with a test per element,
// now 1.1 ms (1 thread, Zen 3). A whole piece is a copy of constant size
// (inline moves): through memcpy and fill calls of a run-time size, the LSTM's
// B=32 I=H=256 training step spent 0.22 of its 1.15 ms backward packing.
template <class T, int64_t UB, class PanelOf>
void pack_backward_panels(const T* W, int64_t nrows, int64_t ncols, int64_t Kp, const int* gates, int ng,
                          int64_t q0, int64_t q1, PanelOf panel_of) {
  for (int gi = 0; gi < ng; ++gi)
    for (int64_t up = 0; up < Kp; ++up) {
      const T* src = up < nrows ? W + (gates[gi] * nrows + up) * ncols : nullptr;
      for (int64_t q = q0; q < q1; ++q) {
        T* o = panel_of(q) + (gi * Kp + up) * UB;
        const int64_t c0 = q * UB, n = src ? std::max<int64_t>(0, std::min(UB, ncols - c0)) : 0;
        if (n == UB) {
          copy_vectors<T, UB>(o, src + c0);
          continue;
        }
        if (n) std::memcpy(o, src + c0, sizeof(T) * size_t(n));
        std::fill(o + n, o + UB, T(0));
      }
    }
}

// x W_ih^T + bias for this thread's units [ua, ub) of every gate. With W_ih
// packed once (PackedRecurrence::wih, fp32), the GEMM reads its panels where
// this thread's columns start on a panel, instead of packing W_ih again.
// With `direct` (direct_products) W_ih is not packed at all (gemm's direct).
template <class T>
void project_inputs(FwdCtx<T>& f, int G, int64_t ua, int64_t ub, GemmScratch<T>& scratch, bool direct) {
  if (ua >= ub) return;
  const PackedRecurrence<T>* p = f.a.packed;
  const bool pre = p && p->precision == WeightPrecision::Same && p->wih.size() && p->NR == kGemmNV * kLanes<T>;
  for (int g = 0; g < G; ++g) {
    int64_t c0 = g * f.Hp + ua;
    const T* panels = pre && c0 % p->NR == 0 ? p->wih.data() + c0 / p->NR * f.I * p->NR : nullptr;
    gemm<T>(f.sc.rows, ub - ua, f.I, AView<T>{f.xrows.data()}, BView<T>{f.wih_cols.data() + c0, false},
            CView<T>{nullptr, f.xp.data() + c0, f.ld_xp}, f.bias.data() + c0, false, scratch, panels, direct);
  }
}

// Whether a call's products read W_ih and W_hh where they are (direct_tile)
// instead of packing them: a call of one or two steps over a few rows (a
// decoder's or a generation loop's), where packing (a read and a write of
// the weights) costs more than the products. Measured, functional forward,
// inference, 1 thread, Zen 5 (AVX-512), us packed -> direct: T=1 B=1 I=H=256
// LSTM 99 -> 61, GRU 74 -> 47, RNN 32 -> 21; H=512 LSTM 581 -> 255; T=1 B=4
// H=512 LSTM 459 -> 276; T=2 B=1 H=256 GRU 79 -> 63. Not beyond: T=1 B=8
// H=512 LSTM 601 -> 711, T=2 B=6 H=256 GRU 98 -> 110, T=3 B=1 even.
inline bool direct_products(const Schedule& sc) { return sc.S <= 2 && sc.S * sc.B <= 4; }

// The input projection from W_ih packed once (PackedRecurrence::wih): this
// thread's share of the column panels over every row. Used when the rows are
// few (their x fits in L2 with room to spare), where packing W_ih in the call
// would cost more than the GEMM; a barrier follows, since a thread's panels
// are not its loop units.
// Weights packed in a reduced precision always go this way (they have no fp32 copy).
template <class T>
bool project_packed_fits(const FwdCtx<T>& f) {
  const PackedRecurrence<T>* p = f.a.packed;
  // (Not when gemm() would split I into blocks: it adds their sums in another order than one pass,
  // and a frozen layer's results must equal the layer's bitwise.)
  return p && (p->precision != WeightPrecision::Same ||
               (p->wih.size() && f.sc.rows * f.I * int64_t(sizeof(T)) <= cache_sizes().l2 &&
                gemm_kc<T>(f.I, p->NR, false) == f.I));
}

template <class T>
void project_packed(FwdCtx<T>& f, int G, int tid, int nt) {
  const PackedRecurrence<T>& p = *f.a.packed;
  const int64_t N = G * f.Hp, np = ceil_div(N, p.NR);
  int64_t q0, q1;
  split_range(np, nt, tid, q0, q1);
  // (With a reduced precision each thread prepares every row itself: no
  // barrier, rows*I beside its rows*I*N/nt.)
  panel_product(p.precision, p.wih, p.low_wih, [&](int64_t r) { return f.xrows[r]; }, f.sc.rows, f.I, N, q0, q1,
                f.bias.data(), f.xp.data(), f.ld_xp);
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
// (half this CPU's L1) stays in L1 while every row tile passes over it; the tiles wait
// in `acc` (ceil(n/MR)*MR*NR) between chunks. Otherwise each row tile would
// stream the whole panel, and its A rows, from L2.
//
// With `wrows` (the block's NR W rows, null: a padding column; direct_products)
// there is no panel: the tiles read W where it is (direct_tile), in the same
// tiles and K chunks, so the same bits.
template <class T, int MR, int NV, class ARow, class Epi>
inline void step_tiles(int64_t n, int64_t K, const T* panel, ARow arow, Epi epi, T* acc,
                       const T* const* wrows = nullptr) {
  constexpr int64_t NR = NV * kLanes<T>;
  static const int64_t KC = std::max<int64_t>(16, (cache_sizes().l1 / 2 / int64_t(NR * sizeof(T))) / 8 * 8);
  const T* arows[MR];
  const T* wk[NR];
  auto rows_at = [&](int64_t r0, int m, int64_t k0) {
    for (int r = 0; r < MR; ++r) arows[r] = arow(r0 + std::min(r, m - 1)) + k0;
    if (wrows)
      for (int64_t c = 0; c < NR; ++c) wk[c] = wrows[c] ? wrows[c] + k0 : nullptr;
  };
  if (n <= MR || K <= KC) {
    for (int64_t r0 = 0; r0 < n; r0 += MR) {
      int m = int(std::min<int64_t>(MR, n - r0));
      rows_at(r0, m, 0);
      if (wrows)
        direct_tile<T, MR, NV, false>(m, K, arows, wk, acc);
      else
        ukernel_rows<T, MR, NV, false>(m, K, nullptr, arows, panel, acc);
      epi(r0, m, acc);
    }
    return;
  }
  // The chunk kPrefetchChunks ahead (past the panel's end: the next block's
  // panel, which follows it in memory) is requested while the row tiles pass
  // over this one, so that a panel that streams from L3 or DRAM (W_hh beyond
  // L2: H=1024) arrives during the compute instead of on demand. (Only a
  // hint: results are unchanged.) Measured on Zen 3, LSTM T=25 H=1024
  // inference, alternating builds:
  // - with three tiles or more, each tile requests its share of the chunk's
  //   lines before it runs: B=16 7-11% faster at 1 thread, 12% at 2;
  // - with one or two (B=4..6 here) those bursts stall on the misses in
  //   flight, so the first tile's kernel requests one panel row per k row
  //   instead, between its FMAs: B=4 1.10-1.13x at 1 thread, 1.17x at 2,
  //   B=5 1.03-1.10x, B=6 1.06-1.08x (with three or more it measured 0.93x).
  constexpr int64_t kPrefetchChunks = 4, kLine = 64;
  const int64_t ahead_elems = kPrefetchChunks * KC * NR, ntiles = (n + MR - 1) / MR,
                lines = KC * NR * int64_t(sizeof(T)) / kLine;
  const bool in_kernel = ntiles <= 2;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = std::min(KC, K - k0);
    // (As an integer: the address may lie past the buffer's end, where no pointer may point.)
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(panel) + uintptr_t(k0 * NR + ahead_elems) * sizeof(T);
    for (int64_t r0 = 0; r0 < n; r0 += MR) {
      int m = int(std::min<int64_t>(MR, n - r0));
      const int64_t t = r0 / MR;
      rows_at(r0, m, k0);
      T* tile = acc + r0 * NR;
      if (wrows) {
        if (k0 == 0)
          direct_tile<T, MR, NV, false>(m, kc, arows, wk, tile);
        else
          direct_tile<T, MR, NV, true>(m, kc, arows, wk, tile);
        continue;
      }
      const T* b = panel + k0 * NR;
      if (in_kernel && t == 0) {
        if (k0 == 0)
          ukernel_rows<T, MR, NV, false, false, MR, true>(m, kc, nullptr, arows, b, tile, ahead_elems);
        else
          ukernel_rows<T, MR, NV, false, true, MR, true>(m, kc, nullptr, arows, b, tile, ahead_elems);
        continue;
      }
      if (!in_kernel)
        for (int64_t l = lines * t / ntiles; l < lines * (t + 1) / ntiles; ++l)
          __builtin_prefetch(reinterpret_cast<const void*>(ahead + uintptr_t(l * kLine)), 0, 1);
      if (k0 == 0)
        ukernel_rows<T, MR, NV, false>(m, kc, nullptr, arows, b, tile);
      else
        ukernel_rows<T, MR, NV, false, true>(m, kc, nullptr, arows, b, tile);
    }
  }
  for (int64_t r0 = 0; r0 < n; r0 += MR) epi(r0, int(std::min<int64_t>(MR, n - r0)), acc + r0 * NR);
}

template <class Tuple>
struct AnyProjection;
template <class... P>
struct AnyProjection<std::tuple<P...>> {
  static constexpr bool value = ((P::kWeights == PhaseWeights::Projection) || ...);
};
// Whether a cell's step has a projection phase (the LSTM's W_hr).
template <class Cell>
constexpr bool kProjected = AnyProjection<typename Cell::Forward>::value;

// This thread's share of a phase's blocks.
inline std::pair<int64_t, int64_t> my_blocks(int64_t nblk, int nt, int tid) {
  int64_t b0, b1;
  split_range(nblk, nt, tid, b0, b1);
  return {b0, b1};
}

// One barrier per phase and step, with its wait recorded when profiling.
inline void step_barrier(PhaseProfile& prof, int tid) {
  const double tb = prof.before_barrier();
#pragma omp barrier
  prof.after_barrier(tid, tb);
}

// ---------------------------------------------------------------- forward --

// A forward phase's geometry: blocks of HB units (kBlockVecs vectors of each
// of its gates), its weights packed per block as [K][NR].
template <class T, class Phase, bool FIRST>
struct ForwardPhase {
  static constexpr int NG = int(std::size(Phase::kGates)), NV = NG * Phase::kBlockVecs, MR = tile_rows(NV),
                       MRL = low_tile_rows(NV);
  static constexpr int64_t HB = Phase::kBlockVecs * kLanes<T>, NR = NV * kLanes<T>;
  static constexpr bool kProj = Phase::kWeights == PhaseWeights::Projection;
  const T* W;
  int64_t nunits, K, nblk;
  T* panels;
  bool prepacked;
  const LowPanels* low;  // panels in a reduced precision (pack_recurrence), or null
  std::vector<const T*> wrows;  // direct: W's row of each block's panel column (null: padding), no panels

  // Panels in `buf`, packed by pack(); or, given `packed` or `low`
  // (pack_recurrence), those; or with `direct` none, W read where it is.
  ForwardPhase(FwdCtx<T>& f, AlignedBuffer<T>& buf, const AlignedBuffer<T>* packed = nullptr,
               const LowPanels* lowered = nullptr, bool direct = false)
      : W(kProj ? f.a.W_hr : f.a.W_hh), nunits(kProj ? f.Ho : f.H), K(kProj ? f.H : f.Ho),
        nblk(ceil_div(kProj ? f.Ho : f.Hp, HB)), prepacked(packed != nullptr || lowered != nullptr), low(lowered) {
    if (direct && !prepacked) {
      // column gi*HB + v of block j: row (gates[gi], j*HB + v), as pack_forward_panel lays it out
      wrows.assign(size_t(nblk * NR), nullptr);
      for (int64_t j = 0; j < nblk; ++j)
        for (int gi = 0; gi < NG; ++gi)
          for (int64_t v = 0; v < HB && j * HB + v < nunits; ++v)
            wrows[size_t(j * NR + gi * HB + v)] = W + (Phase::kGates[gi] * nunits + j * HB + v) * K;
      prepacked = true;  // (nothing to pack)
    } else if (!prepacked) {
      buf.reserve(size_t(nblk * K * NR));
    }
    panels = packed ? const_cast<T*>(packed->data()) : buf.data();
  }
  T* panel(int64_t j) const { return panels + j * K * NR; }
  void pack(std::pair<int64_t, int64_t> blocks) const {
    if (prepacked) return;
    for (int64_t j = blocks.first; j < blocks.second; ++j) pack_forward_panel(W, nunits, K, Phase::kGates, NG, HB, j, panel(j));
  }
  size_t tile_elems(int64_t B) const { return size_t(std::max(ceil_div(B, MR) * MR, int64_t(MRL)) * NR); }

  // qa: this thread's scratch for the A rows of reduced-precision panels.
  template <bool TRAIN>
  void step(FwdCtx<T>& f, std::pair<int64_t, int64_t> blocks, int64_t s, T* acc, LowRows& qa) const {
    const int64_t off = f.sc.offset[s], n = f.sc.active[s];
    auto arow = [&](int64_t i) {
      if constexpr (FIRST)
        return f.arow[off + i];
      else
        return Phase::a_row(f, s, i);
    };
    if constexpr (std::is_same_v<T, float>) {
      if (low) {
        // Every thread prepares the step's rows itself (n*K beside its n*K*NR per block).
        qa.prepare(low->prec, n, K, arow);
        for (int64_t j = blocks.first; j < blocks.second; ++j)
          for (int64_t i0 = 0; i0 < n; i0 += MRL) {
            const int m = int(std::min<int64_t>(MRL, n - i0));
            low_tile<MRL, NV>(*low, j, qa, i0, m, acc);
            Phase::template tile<T, TRAIN>(f, s, i0, m, j * HB, acc);
          }
        return;
      }
    }
    for (int64_t j = blocks.first; j < blocks.second; ++j) {
      auto epi = [&](int64_t i0, int m, const T* tile) { Phase::template tile<T, TRAIN>(f, s, i0, m, j * HB, tile); };
      step_tiles<T, MR, NV>(n, K, panel(j), arow, epi, acc, wrows.empty() ? nullptr : wrows.data() + j * NR);
    }
  }
};

template <class T, class Cell, bool TRAIN, size_t... P>
void forward_loop(FwdCtx<T>& f, int nthreads, std::index_sequence<P...>) {
  using Phases = typename Cell::Forward;
  constexpr size_t kLast = sizeof...(P) - 1;
  std::array<AlignedBuffer<T>, sizeof...(P)> buffers;
  const PackedRecurrence<T>* packed = f.a.packed;
  const bool low = packed && packed->precision != WeightPrecision::Same;
  const Schedule& sc = f.sc;
  const bool direct = !packed && direct_products(sc);
  std::tuple<ForwardPhase<T, std::tuple_element_t<P, Phases>, P == 0>...> phases{
      {f, buffers[P], packed && !low ? &packed->phases[P] : nullptr, low ? &packed->low_phases[P] : nullptr,
       direct}...};
  const int nth = int(std::min<int64_t>(nthreads, std::max({std::get<P>(phases).nblk...})));
  const size_t tile_elems = std::max({std::get<P>(phases).tile_elems(sc.B)...});
  const auto& first = std::get<0>(phases);
  const auto& last = std::get<kLast>(phases);
  PhaseProfile prof(describe_call(f.a, sc, TRAIN ? "forward-train" : "forward-infer", nth), nth);
  std::vector<AlignedBuffer<T>> tile_buffers = per_thread_buffers<T>(nth, tile_elems);
#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::array<std::pair<int64_t, int64_t>, sizeof...(P)> blocks{
        my_blocks(std::get<P>(phases).nblk, nt, tid)...};
    (std::get<P>(phases).pack(blocks[P]), ...);
    prof.phase("pack");
    if (project_packed_fits(f)) {
      project_packed(f, Cell::G, tid, nt);
#pragma omp barrier
    } else {
      GemmScratch<T> scratch;
      project_inputs(f, Cell::G, blocks[0].first * first.HB, std::min(blocks[0].second * first.HB, f.Hp), scratch,
                     direct);
    }
    prof.phase("input-proj");
    T* tiles = tile_buffers[size_t(tid)].data();
    LowRows qa;
    prof.loop_start(tid);
    for (int64_t s = 0; s < sc.S; ++s)
      ((std::get<P>(phases).template step<TRAIN>(f, blocks[P], s, tiles, qa), step_barrier(prof, tid)), ...);
    prof.loop_end("loop", nt);
    write_final_h(f, blocks[kLast].first * last.HB, blocks[kLast].second * last.HB);
    if constexpr (Cell::kCellState) write_final_c(f, blocks[0].first * first.HB, blocks[0].second * first.HB);
  }
}

template <class T, class Cell>
void forward_cell(const ForwardArgs<T>& a, Workspace<T>& w, bool training, int nthreads) {
  constexpr int L = kLanes<T>, G = Cell::G;
  const Schedule& sc = w.sched;
  const int64_t H = a.H, Hp = ceil_div(H, L) * L, Ho = a.P ? a.P : H;
  FwdCtx<T> f(a, sc, training ? &w : nullptr, Hp);
  f.Ho = Ho;
  f.mask = a.h_mask;
  if (training) {
    // A workspace in caller memory (Workspace::borrow) lends these views,
    // which then fill in place; otherwise they are empty and allocate.
    f.hm = std::move(w.hm), f.h0m = std::move(w.h0m), f.m = std::move(w.m);
  }
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
  if constexpr (kProjected<Cell>) {
    f.ld_m = good_ld<T>(Hp);
    f.m.reserve(size_t(sc.rows * f.ld_m));
  }
  fill_row_pointers<T>(f, sc, a.I, a.x, a.h0, a.y, f.zeros.data(), f.hm.data(), f.h0m.data(), f.ld_hm);
  f.wih_cols.assign(size_t(G * Hp), nullptr);
  for (int g = 0; g < G; ++g)
    for (int64_t u = 0; u < H; ++u) f.wih_cols[g * Hp + u] = a.W_ih + (g * H + u) * a.I;
  // Biases that can be added before the nonlinearity go into the projection;
  // a separate b_hn (GRU) stays apart because r multiplies it.
  f.bias.zero(size_t(G * Hp));
  f.b_hn.zero(size_t(Hp));
  if (a.b_ih)
    for (int g = 0; g < G; ++g)
      for (int64_t u = 0; u < H; ++u) {
        const bool fold = !(Cell::kSeparateBhn && g == G - 1);
        f.bias.data()[g * Hp + u] = a.b_ih[g * H + u] + (fold ? a.b_hh[g * H + u] : T(0));
        if (!fold) f.b_hn.data()[u] = a.b_hh[g * H + u];
      }
  f.ld_xp = good_ld<T>(G * Hp);
  f.xp.reserve(size_t(sc.rows * f.ld_xp));
  f.state.zero(size_t(sc.B * Hp));
  if (Cell::kCellState && a.c0)
    for (int64_t i = 0; i < sc.B; ++i)
      std::memcpy(f.state.data() + i * Hp, a.c0 + sc.order[i] * H, sizeof(T) * size_t(H));
  if (Cell::kExtra && !training) f.extra.zero(size_t(sc.B * Hp));
  if (training) {
    w.Hp = Hp;
    w.ld_gates = good_ld<T>(Cell::kSaved * Hp);
    w.ld_extra = good_ld<T>(Hp);
    if (Cell::kSaved) w.gates.reserve(size_t(sc.rows * w.ld_gates));
    if (Cell::kExtra) w.extra.zero(size_t(sc.rows * w.ld_extra));
  }
  constexpr auto phases = std::make_index_sequence<std::tuple_size_v<typename Cell::Forward>>{};
  if (training)
    forward_loop<T, Cell, true>(f, nthreads, phases);
  else
    forward_loop<T, Cell, false>(f, nthreads, phases);
  if (training) {  // backward reads these again
    w.hm = std::move(f.hm), w.h0m = std::move(f.h0m), w.ld_hm = f.ld_hm;
    w.m = std::move(f.m), w.ld_m = f.ld_m;
  }
}

// Packs every forward phase's panels once (pack_recurrence).
template <class T, class Phase, bool FIRST>
void pack_phase(FwdCtx<T>& f, AlignedBuffer<T>& buf, WeightPrecision prec, LowPanels& low) {
  using FP = ForwardPhase<T, Phase, FIRST>;
  FP phase(f, buf);
  phase.pack({0, phase.nblk});
  lower_into(buf, phase.nblk, phase.K, FP::NR, prec, low);
}
template <class T, class Cell, size_t... P>
void pack_phases(FwdCtx<T>& f, PackedRecurrence<T>& out, std::index_sequence<P...>) {
  using Phases = typename Cell::Forward;
  out.phases.resize(sizeof...(P));
  out.low_phases.resize(sizeof...(P));
  (pack_phase<T, std::tuple_element_t<P, Phases>, P == 0>(f, out.phases[P], out.precision, out.low_phases[P]), ...);
}

template <class T>
void pack_recurrence_impl(const ForwardArgs<T>& a, WeightPrecision prec, PackedRecurrence<T>& out) {
  constexpr int L = kLanes<T>;
  const Schedule none;
  const int64_t Hp = ceil_div(a.H, L) * L;
  FwdCtx<T> f(a, none, nullptr, Hp);
  f.Ho = a.P ? a.P : a.H;
  out.cell = a.cell, out.I = a.I, out.H = a.H, out.P = a.P;
  out.NR = kGemmNV * L;
  out.precision = std::is_same_v<T, float> ? prec : WeightPrecision::Same;
  const int G = gates_of(a.cell);
  pack_gate_columns(a.W_ih, G, a.H, Hp, a.I, out.NR, out.wih);
  lower_into(out.wih, ceil_div(G * Hp, out.NR), a.I, out.NR, out.precision, out.low_wih);
  with_cell(a.cell, a.P > 0, [&](auto cell) {
    using Cell = decltype(cell);
    pack_phases<T, Cell>(f, out, std::make_index_sequence<std::tuple_size_v<typename Cell::Forward>>{});
  });
}

template <class T>
void forward_impl(const ForwardArgs<T>& a, Workspace<T>& w, bool training, int nthreads) {
  if (w.sched.rows == 0) return;
  with_cell(a.cell, a.P > 0, [&](auto cell) { forward_cell<T, decltype(cell)>(a, w, training, nthreads); });
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

// dx for this thread's rows: dG_ih W_ih (W_ih's panels from b.g.packed where given).
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
  const T* prepacked = b.g.packed ? b.g.packed->wih.data() : nullptr;
  if (!prepacked)
    for (int64_t k = 0; k < ng * Hp; ++k)
      wrows[k] = k % Hp < H ? b.a.W_ih + (order[k / Hp] * H + k % Hp) * b.I : nullptr;
  gemm<T>(r1 - r0, b.I, ng * Hp, AView<T>{arows.data()}, BView<T>{wrows.data(), true}, CView<T>{crows.data()},
          nullptr, false, s, prepacked);
}

// W_ih as input_grad's B (K = ng*Hp rows of dG's input columns, in gate order
// `order`; N = I) in whole NR-wide column panels over all of K, zero-padded,
// as gemm() reads prepacked panels: the same values its own packing gives.
template <class T>
void pack_input_grad_panels(const T* W_ih, int64_t H, int64_t I, int64_t Hp, const int* order, int ng,
                            AlignedBuffer<T>& out) {
  constexpr int64_t NR = kGemmNV * kLanes<T>;
  const int64_t K = ng * Hp, np = ceil_div(I, NR);
  out.reserve(size_t(np * K * NR));
  pack_backward_panels<T, NR>(W_ih, H, I, Hp, order, ng, 0, np, [&](int64_t q) { return out.data() + q * K * NR; });
}

// dL/dh_t for units u..u+L (Ho wide): the recurrent part (masked as h was),
// dy_t, the dh_n of entries whose last step is s, and the direct carries.
// Under zoneout (h_t = h~ + m (h_{t-1} - h~)) the cell's update gets
// (1 - m) of it, and m of it waits in zcarry for step s-1 (an entry's
// zcarry is zero until its last step, where the backward loop meets it first).
template <class T, bool DIRECT>
inline Vec<T> gather_dh(BwdCtx<T>& b, Vec<T> rec, int64_t i, int64_t row, int64_t u, bool last_step) {
  const Schedule& sc = b.sc;
  const int64_t Ho = b.Ho, bi = sc.row_b[row], t = sc.row_t[row];
  Vec<T> dh = b.masked(rec, bi, u);
  if (b.g.dy) dh += load_h(b.g.dy + (t * sc.B + bi) * Ho, u, Ho);
  if (last_step && b.g.dh_n) dh += load_h(b.g.dh_n + bi * Ho, u, Ho);
  if (DIRECT) dh += loadu(b.carry.data() + i * b.Hp + u);
  T* zc = b.a.zoneout_h ? b.zcarry.data() + i * b.ld_z + u : nullptr;
  if (zc) dh += loadu(zc);
  if (b.g.dh_seq) store_h(b.g.dh_seq + (t * sc.B + bi) * Ho, u, Ho, dh);
  if (zc) {
    const Vec<T> skip = load_h(time_major_row(b.a.zoneout_h, sc, row, Ho), u, Ho) * dh;
    storeu(zc, skip);
    dh -= skip;
  }
  return dh;
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
          if (b.a.zoneout_h) dh += loadu(b.zcarry.data() + i * b.ld_z + u);
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

// After the loop: dx, dW_ih, dW_hh (dW_hr) and db, from the complete dG.
// dG columns col0.. in ng groups of Hp, in gate order `order`: the A of a
// weight-gradient GEMM (or the columns a bias gradient sums).
struct DgColumns {
  int64_t col0;
  int ng;
  const int* order;
  bool operator==(const DgColumns& o) const {
    return col0 == o.col0 && ng == o.ng && std::equal(order, order + ng, o.order);
  }
};

// The weight gradients (and biases) that read the same dG columns, as one
// gemm_shared_a: dG^T packed once per K block for all of them, and the bias
// as its sums over rows from that packing pass. Threads split the rows of
// dW in whole MR tiles, as weight_grad.
template <class T>
struct SharedDgGrads {
  DgColumns cols;
  std::vector<std::pair<const std::vector<const T*>*, std::pair<T*, int64_t>>> prods;  // B rows, (dW, N)
  std::vector<T*> dbs;

  void run(BwdCtx<T>& b, int tid, int nt, GemmScratch<T>& s, std::vector<T>& colsum) const {
    const int64_t M = cols.ng * b.Hp;
    int64_t m0, m1;
    split_range(ceil_div(M, kGemmMR), nt, tid, m0, m1);
    m0 *= kGemmMR, m1 = std::min(M, m1 * kGemmMR);
    if (m0 >= m1) return;
    std::vector<std::vector<T*>> crows(prods.size(), std::vector<T*>(size_t(m1 - m0)));
    std::vector<SharedAProduct<T>> sp;
    for (size_t j = 0; j < prods.size(); ++j) {
      for (int64_t m = m0; m < m1; ++m) {
        const int64_t up = m % b.Hp;
        crows[j][m - m0] = up < b.H ? prods[j].second.first + (cols.order[m / b.Hp] * b.H + up) * prods[j].second.second
                                    : nullptr;
      }
      sp.push_back({BView<T>{prods[j].first->data(), true}, CView<T>{crows[j].data()}, prods[j].second.second});
    }
    colsum.resize(size_t(m1 - m0));
    gemm_shared_a<T>(m1 - m0, b.sc.rows, AView<T>{nullptr, b.dG.data() + cols.col0 + m0, 1, b.ld_dG}, sp.data(),
                     int(sp.size()), dbs.empty() ? nullptr : colsum.data(), s);
    for (T* db : dbs)
      for (int64_t m = m0; m < m1; ++m) {
        const int64_t up = m % b.Hp;
        if (up < b.H) db[cols.order[m / b.Hp] * b.H + up] = colsum[m - m0];
      }
  }
};

template <class T, class Cell>
void parameter_grads(BwdCtx<T>& b, int tid, int nt, PhaseProfile& prof) {
  GemmScratch<T> scratch;
  const int64_t Hp = b.Hp, ih0 = Cell::kIhOff * Hp;
  if (b.g.dx) {  // (null: the input needs no gradient)
    input_grad(b, ih0, Cell::G, Cell::kIhOrder, tid, nt, scratch);
    prof.phase("dx");
  }
  // dW_ih, dW_hh's parts and the biases, grouped by the dG columns they read.
  std::vector<SharedDgGrads<T>> groups;
  auto group = [&](DgColumns c) -> SharedDgGrads<T>& {
    for (SharedDgGrads<T>& g : groups)
      if (g.cols == c) return g;
    groups.push_back(SharedDgGrads<T>{c, {}, {}});
    return groups.back();
  };
  group({ih0, Cell::G, Cell::kIhOrder}).prods.push_back({&b.xrows, {b.g.dW_ih, b.I}});
  for (const HhPart& part : Cell::kHhParts) {
    const bool extra = part.rows == HhRows::Extra;
    group({part.col0 * Hp, part.ng, part.order})
        .prods.push_back({extra ? &b.extra_rows : &b.arow, {b.g.dW_hh, extra ? b.H : b.Ho}});
  }
  if (b.g.db_ih) group({ih0, Cell::G, Cell::kIhOrder}).dbs.push_back(b.g.db_ih);
  if (b.g.db_hh) group({Cell::kHhOff * Hp, Cell::G, Cell::kHhOrder}).dbs.push_back(b.g.db_hh);
  std::vector<T> colsum;
  for (const SharedDgGrads<T>& g : groups) g.run(b, tid, nt, scratch, colsum);
  prof.phase("dW_ih+dW_hh+db");
  if constexpr (kProjected<Cell>) {
    static constexpr int kOne[1] = {0};
    weight_grad(b, WeightGradJob<T>{b.dh.data(), b.ld_dh, 1, kOne, b.Ho, b.Ho, &b.m_rows, b.g.dW_hr, b.H}, tid, nt,
                scratch);
    prof.phase("dW_hr");
  }
}

// The dG column group where the first phase's A rows start.
template <class Phase, bool FIRST>
constexpr int64_t first_column() {
  if constexpr (FIRST)
    return Phase::kCol0;
  else
    return 0;
}

// dG's lanes past H (the padding of a last, partial vector of units) set to
// zero. Their weights are zero, but a padded lane can hold NaN: an inf input
// times W_ih's zero padding column in the input projection. 0 * NaN would
// then reach every gradient (dh, dx, dW) where torch.nn keeps the NaN in the
// column of dW_ih that multiplies the inf.
template <class T, class Cell>
inline void zero_padded_dG(BwdCtx<T>& b, int64_t row, int64_t u) {
  constexpr int L = kLanes<T>;
  if (u + L <= b.H) return;
  T* d = b.dG_row(row) + u;
  for (int g = 0; g < Cell::kGrad; ++g)
    for (int64_t l = std::max<int64_t>(0, b.H - u); l < L; ++l) d[g * b.Hp + l] = T(0);
}

// A backward phase's geometry: its weights ([ng groups of nrows, ncols]) packed
// per block of UB output columns as [ng*Kp][UB].
template <class T, class Phase, bool FIRST>
struct BackwardPhase {
  static constexpr int NG = int(std::size(Phase::kGates)), NV = kGemmNV, MR = tile_rows(NV);
  static constexpr int64_t UB = NV * kLanes<T>;
  static constexpr bool kProj = Phase::kWeights == PhaseWeights::Projection;
  const T* W;
  int64_t nrows, ncols, Kp, K, limit, nblk;
  T* panels;

  bool prepacked;

  // Panels in `buf`, packed by pack(); or those of `packed` (pack_backward).
  BackwardPhase(BwdCtx<T>& b, AlignedBuffer<T>& buf, const AlignedBuffer<T>* packed = nullptr)
      : W(kProj ? b.a.W_hr : b.a.W_hh), nrows(kProj ? b.Ho : b.H), ncols(kProj ? b.H : b.Ho),
        Kp(kProj ? b.Ho : b.Hp), K(NG * Kp), limit(ceil_div(ncols, kLanes<T>) * kLanes<T>),
        nblk(ceil_div(limit, UB)), prepacked(packed != nullptr) {
    if (!prepacked) buf.reserve(size_t(nblk * K * UB));
    panels = prepacked ? const_cast<T*>(packed->data()) : buf.data();
  }
  T* panel(int64_t q) const { return panels + q * K * UB; }
  void pack(std::pair<int64_t, int64_t> blocks) const {
    if (prepacked) return;
    pack_backward_panels<T, UB>(W, nrows, ncols, Kp, Phase::kGates, NG, blocks.first, blocks.second,
                         [this](int64_t q) { return panel(q); });
  }

  template <class Cell>
  void step(BwdCtx<T>& b, std::pair<int64_t, int64_t> blocks, int64_t s, T* acc) const {
    const Schedule& sc = b.sc;
    const int64_t off = sc.offset[s], n = sc.active[s], nn = s + 1 < sc.S ? sc.active[s + 1] : 0;
    auto next_rows = next_step_rows(b, s, first_column<Phase, FIRST>() * b.Hp);
    for (int64_t q = blocks.first; q < blocks.second; ++q) {
      auto epi = [&](int64_t i0, int m, const T* tile) {
        for_tile_vectors<T, NV>(tile, off, i0, m, q * UB, limit, [&](int64_t i, int64_t row, int64_t u, Vec<T> v) {
          if constexpr (FIRST)  // the first phase's product is the recurrent part of dL/dh_t
            Phase::unit(b, s, i, row, u, gather_dh<T, Cell::kDirectCarry>(b, v, i, row, u, i >= nn));
          else
            Phase::unit(b, s, i, row, u, v);
          zero_padded_dG<T, Cell>(b, row, u);
        });
      };
      // The first phase multiplies dG of step s+1, which entries ending at s (all of them at the
      // last step) lack: their recurrent part is 0. Row tiles made only of such entries take a
      // zero tile instead of a product over zero rows (the whole GEMM at the last step: with a
      // training call per step, T = 1, 2.7 of 18 ms at B=64 H=512). The tiles that run are the
      // ones that ran before, so every sum is bitwise the same (a row's sum depends on its tile:
      // a one-row tile sums k in four interleaved parts; whether K is split into chunks does not
      // matter, each accumulator goes on in k order from its stored value).
      const int64_t rows = FIRST ? std::min(n, ceil_div(nn, int64_t(MR)) * MR) : n;
      step_tiles<T, MR, NV>(
          rows, K, panel(q),
          [&](int64_t i) {
            if constexpr (FIRST)
              return next_rows(i);
            else
              return Phase::a_row(b, s, i);
          },
          epi, acc);
      for (int64_t i0 = rows; i0 < n; i0 += MR) epi(i0, int(std::min<int64_t>(MR, n - i0)), b.zeros.data());
    }
  }
};

template <class T, class Cell, size_t... P>
void backward_loop(BwdCtx<T>& b, int nthreads, std::index_sequence<P...>) {
  using Phases = typename Cell::Backward;
  constexpr size_t kLast = sizeof...(P) - 1;
  std::array<AlignedBuffer<T>, sizeof...(P)> buffers;
  std::tuple<BackwardPhase<T, std::tuple_element_t<P, Phases>, P == 0>...> phases{
      {b, buffers[P], b.g.packed ? &b.g.packed->phases[P] : nullptr}...};
  const Schedule& sc = b.sc;
  const int nth = int(std::min<int64_t>(nthreads, std::max({std::get<P>(phases).nblk...})));
  const auto& first = std::get<0>(phases);
  constexpr int64_t UB = std::tuple_element_t<0, decltype(phases)>::UB;
  constexpr int MR = std::tuple_element_t<0, decltype(phases)>::MR, NV = kGemmNV;
  PhaseProfile prof(describe_call(b.a, sc, "backward", nth), nth);
  std::vector<AlignedBuffer<T>> tile_buffers = per_thread_buffers<T>(nth, size_t(ceil_div(sc.B, MR) * MR * UB));
#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::array<std::pair<int64_t, int64_t>, sizeof...(P)> blocks{
        my_blocks(std::get<P>(phases).nblk, nt, tid)...};
    (std::get<P>(phases).pack(blocks[P]), ...);
    // The last phase produces the gradients of the H-wide units, where the carry lives.
    const int64_t ua = blocks[kLast].first * UB, ub = std::min(blocks[kLast].second * UB, b.Hp);
    init_carry(b, Cell::kCellState ? b.g.dc_n : nullptr, ua, ub);
    T* acc = tile_buffers[size_t(tid)].data();
    prof.phase("pack");
    prof.loop_start(tid);
    for (int64_t s = sc.S - 1; s >= 0; --s)
      ((std::get<P>(phases).template step<Cell>(b, blocks[P], s, acc), step_barrier(prof, tid)), ...);
    prof.loop_end("loop", nt);
    for (int64_t q = blocks[0].first; q < blocks[0].second; ++q)
      initial_state_grad<T, MR, NV, Cell::kDirectCarry>(b, first.K, std::tuple_element_t<0, Phases>::kCol0 * b.Hp,
                                                        first.panel(q), q * UB, first.limit, acc);
    if (Cell::kCellState && b.g.dc0) copy_carry_out(b, b.g.dc0, ua, ub);
    prof.phase("dh0");
    // dG is complete since the last step's barrier.
    parameter_grads<T, Cell>(b, tid, nt, prof);
  }
}

template <class T, class Cell>
void backward_cell(const Workspace<T>& w, const ForwardArgs<T>& a, const BackwardArgs<T>& g, int nthreads) {
  constexpr int L = kLanes<T>;
  BwdCtx<T> b(a, g, w);
  const Schedule& sc = w.sched;
  const int64_t Hp = w.Hp;
  b.Ho = a.P ? a.P : a.H;
  b.mask = a.h_mask;
  using First = BackwardPhase<T, std::tuple_element_t<0, typename Cell::Backward>, true>;
  // (zeros: also the zero tile of the first phase's steps, MR x UB)
  b.zeros.zero(size_t(std::max({int64_t(Cell::kGrad) * Hp, b.Ho, int64_t(First::MR) * First::UB}) + L));
  fill_row_pointers<T>(b, sc, a.I, a.x, a.h0, a.y, b.zeros.data(), w.hm.data(), w.h0m.data(), w.ld_hm);
  b.ld_dG = good_ld<T>(Cell::kGrad * Hp);
  b.dG.reserve(size_t(sc.rows * b.ld_dG));
  b.carry.zero(size_t(sc.B * Hp));
  if (a.zoneout_h) {
    // The first phase's blocks reach units up to a whole block past Ho.
    b.ld_z = ceil_div(b.Ho, First::UB) * First::UB;
    b.zcarry.zero(size_t(sc.B * b.ld_z));
  }
  if constexpr (kProjected<Cell>) {
    b.ld_dh = good_ld<T>(ceil_div(b.Ho, L) * L);
    b.dh.reserve(size_t(sc.rows * b.ld_dh));
    b.m_rows.resize(size_t(sc.rows));
    for (int64_t r = 0; r < sc.rows; ++r) b.m_rows[r] = w.m.data() + r * w.ld_m;
  }
  if constexpr (Cell::kExtra) {
    b.extra_rows.resize(size_t(sc.rows));
    for (int64_t r = 0; r < sc.rows; ++r) b.extra_rows[r] = w.extra_row(r);
  }
  backward_loop<T, Cell>(b, nthreads, std::make_index_sequence<std::tuple_size_v<typename Cell::Backward>>{});
}

template <class T>
void backward_impl(const Workspace<T>& w, const ForwardArgs<T>& a, const BackwardArgs<T>& g, int nthreads) {
  if (w.sched.rows == 0) return;
  with_cell(a.cell, a.P > 0, [&](auto cell) { backward_cell<T, decltype(cell)>(w, a, g, nthreads); });
}

// Packs what every backward call packs from the weights (pack_backward): the
// phases' panels as backward_loop packs them, and W_ih for dx.
template <class T, class Cell, size_t... P>
void pack_backward_phases(BwdCtx<T>& b, PackedBackward<T>& out, std::index_sequence<P...>) {
  using Phases = typename Cell::Backward;
  out.phases.resize(sizeof...(P));
  auto one = [&](auto phase) { phase.pack({0, phase.nblk}); };
  (one(BackwardPhase<T, std::tuple_element_t<P, Phases>, P == 0>(b, out.phases[P])), ...);
}

template <class T>
void pack_backward_impl(const Workspace<T>& w, const ForwardArgs<T>& a, PackedBackward<T>& out) {
  const BackwardArgs<T> none;
  BwdCtx<T> b(a, none, w);
  b.Ho = a.P ? a.P : a.H;
  out.cell = a.cell, out.I = a.I, out.H = a.H, out.P = a.P, out.Hp = w.Hp;
  with_cell(a.cell, a.P > 0, [&](auto cell) {
    using Cell = decltype(cell);
    pack_backward_phases<T, Cell>(b, out, std::make_index_sequence<std::tuple_size_v<typename Cell::Backward>>{});
    pack_input_grad_panels<T>(a.W_ih, a.H, a.I, w.Hp, Cell::kIhOrder, Cell::G, out.wih);
  });
}

// forward_cell's workspace buffers (and strides), laid out one after another.
template <class T, class Cell>
ResidualLayout residual_layout_cell(const ForwardArgs<T>& a, int64_t rows) {
  constexpr int L = kLanes<T>;
  constexpr int64_t kAlign = 64 / int64_t(sizeof(T));
  const int64_t Hp = ceil_div(a.H, L) * L, Ho = a.P ? a.P : a.H;
  ResidualLayout r;
  r.Hp = Hp;
  r.ld_gates = good_ld<T>(Cell::kSaved * Hp);
  r.ld_extra = good_ld<T>(Hp);
  if (a.h_mask) r.ld_hm = good_ld<T>(ceil_div(Ho, L) * L);
  if (kProjected<Cell>) r.ld_m = good_ld<T>(Hp);
  r.n_gates = Cell::kSaved ? rows * r.ld_gates : 0;
  r.n_extra = Cell::kExtra ? rows * r.ld_extra : 0;
  r.n_hm = rows * r.ld_hm, r.n_h0m = a.B * r.ld_hm, r.n_m = rows * r.ld_m;
  int64_t at = 0;
  auto place = [&](int64_t& off, int64_t n) { off = at, at += ceil_div(n, kAlign) * kAlign; };
  place(r.gates, r.n_gates), place(r.extra, r.n_extra), place(r.hm, r.n_hm), place(r.h0m, r.n_h0m);
  place(r.m, r.n_m);
  r.elems = at;
  return r;
}

template <class T>
ResidualLayout residual_layout(const ForwardArgs<T>& a, int64_t rows) {
  ResidualLayout r;
  with_cell(a.cell, a.P > 0, [&](auto cell) { r = residual_layout_cell<T, decltype(cell)>(a, rows); });
  return r;
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn

// The layer-normalised cells' driver (uses step_tiles above).
#include "layernorm.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

template <class T>
constexpr KernelOps<T> make_ops() {
  return {&forward_impl<T>,   &backward_impl<T>,    &cell_step_impl<T>,
          &pack_cell_impl<T>, &packed_step_impl<T>, &pack_recurrence_impl<T>, &pack_backward_impl<T>,
          &residual_layout<T>, &ln_forward_impl<T>, &ln_backward_impl<T>};
}

inline const KernelTable& make_table() {
  static const KernelTable table{make_ops<float>(), make_ops<double>(), &fma_peak_gflops, &read_bandwidth_gbs};
  return table;
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
