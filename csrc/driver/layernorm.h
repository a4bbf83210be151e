// The layer-normalised LSTM and GRU (pyrnn/api.h LayerNormArgs), one layer
// and direction per call, for one ISA level.
//
// The plain cells' driver (driver.h) fuses the element-wise update into the
// recurrent GEMM's tiles, each thread owning blocks of units. Layer norm needs
// a reduction over each gate block of H units of a row before any unit can be
// updated, so this driver splits each step in two phases instead:
//
// Forward:
//   before the loop: the input projection x W_ih^T for every packed row
//     (threads split its columns), barrier, then LN of each row (threads
//     split the rows) to xhat_ih and 1/sigma;
//   per step s: (a) gh = h_{t-1} W_hh^T for the step's active rows into a
//     [B, Npad] buffer, threads splitting the NR-column panels of W_hh^T
//     (packed once per call); barrier; (b) per row (threads split the rows):
//     LN of gh's blocks, the gates, the state update (and for the LSTM the
//     cell state's LN), writing h_t into y; barrier.
// Backward, per step s from the last: (a) per row: dL/dh_t (the recurrent part
//   from step s+1's GEMM, dy, dh_n), the cell's gradient to dA (dL/d the
//   normalised input projection) and dAh (the normalised hidden projection),
//   then dAh through the hidden LN to dGh; barrier; (b) dGh W_hh for the
//   step's rows (threads split the column panels of W_hh): the recurrent part
//   of dL/dh_{t-1}; barrier. After the loop: the gains' and betas' gradients
//   as column sums over rows, dA through the input LN (in place), then dx,
//   dW_ih and dW_hh as single GEMMs over all rows.
//
// Recurrent dropout (h_mask): the recurrent GEMM reads h_{t-1} * mask[b],
// rows kept in `hm` (forward: written with h_t; backward: rebuilt from y),
// which dW_hh uses too; dL/dh_{t-1}'s part through W_hh is masked likewise.
// Zoneout (zoneout_h, zoneout_c [T, B, H], time-aligned with x): after the
// cell's update, h_t = m h_{t-1} + (1 - m) h~_t (and the state c_t likewise,
// while h~_t reads the LN of the un-zoned c~_t); backward gives the cell
// (1 - m) of dL/dh_t and passes m dL/dh_t to step s-1 through carry_h
// (carry_c for c).
//
// LSTM projection (P > 0, PyTorch proj_size; a compile-time branch, so the
// unprojected path is the code without it): h is P wide. Forward step (b)
// writes m = o * tanh(LN(c)) [Hp] per row (saved for training), then a third
// phase (c) after a barrier: h~ = m W_hr^T for the step's rows, threads
// splitting the NR-column panels of W_hr^T (packed once), zoneout_h, y and
// the masked row in the GEMM's epilogue. Backward per step: (a0) per row
// dL/dh~_t (P wide, saved in dH for dW_hr); barrier; (a1) dm = dH W_hr,
// threads splitting the column panels of W_hr; barrier; then (a) with dm as
// the cell's dL/dh and (b) as above, P wide. After the loop dW_hr = dH^T m.
//
// Internal rows are gate-major, each gate block Hp wide (whole vectors), the
// lanes beyond H zero. Every sum runs in a fixed order (GEMMs k ascending, LN
// statistics over a row's vectors then lanes, column sums rows ascending) and
// threads split only over output elements (rows or columns), so results are
// bitwise identical for any thread count.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../cells/context.h"
#include "../gemm/gemm.h"
#include "../runtime/workspace.h"
#include "step.h"  // hsum: a vector's lanes summed in a fixed order

namespace pyrnn {
namespace PYRNN_ISA_NS {

constexpr double kLnEps = 1e-5;  // as torch.nn.LayerNorm

// v with lanes at or beyond `valid` (of this vector) set to zero.
template <class T>
inline Vec<T> keep_first(Vec<T> v, int64_t valid) {
  if (valid >= kLanes<T>) return v;
  Vec<T> idx;
  for (int l = 0; l < kLanes<T>; ++l) idx[l] = T(l);
  return idx < bcast(T(valid)) ? v : Vec<T>{};
}

// LN statistics of one block (H valid units, Hp wide): writes xhat (zero
// beyond H) and returns 1/sigma. Two passes (mean, then the centred squares):
// the one-pass E[v^2] - mean^2 cancels badly in float32.
template <class T>
inline T ln_block_forward(const T* v, int64_t H, int64_t Hp, T* xhat) {
  constexpr int L = kLanes<T>;
  Vec<T> acc{};
  for (int64_t u = 0; u < Hp; u += L) acc += keep_first<T>(loadu(v + u), H - u);
  const T mean = hsum<T>(acc) / T(H);
  Vec<T> sq{};
  for (int64_t u = 0; u < Hp; u += L) {
    Vec<T> d = keep_first<T>(loadu(v + u) - mean, H - u);
    sq += d * d;
  }
  const T rstd = T(1) / std::sqrt(hsum<T>(sq) / T(H) + T(kLnEps));
  for (int64_t u = 0; u < Hp; u += L) storeu(xhat + u, keep_first<T>((loadu(v + u) - mean) * rstd, H - u));
  return rstd;
}

// LN backward of one block: dv = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
// with dxhat = dout * gamma; dout, xhat Hp wide; gamma H wide. dv may alias
// dout. dxhat goes through dv's memory, rounded once: recomputing it in the
// second pass would let -ffp-contract fuse dout * gamma - mean into an FMA
// with an unrounded product, and the difference (zero when H = 1) would be
// an ulp of dxhat amplified by rstd (up to 1/sqrt(eps) ~ 316).
template <class T>
inline void ln_block_backward(const T* dout, const T* xhat, T rstd, const T* gamma, int64_t H, int64_t Hp, T* dv) {
  constexpr int L = kLanes<T>;
  Vec<T> s1{}, s2{};
  for (int64_t u = 0; u < Hp; u += L) {
    Vec<T> dx = loadu(dout + u) * load_h(gamma, u, H);
    storeu(dv + u, dx);
    s1 += dx;
    s2 += dx * loadu(xhat + u);
  }
  const T m1 = hsum<T>(s1) / T(H), m2 = hsum<T>(s2) / T(H);
  for (int64_t u = 0; u < Hp; u += L)
    storeu(dv + u, keep_first<T>((loadu(dv + u) - m1 - loadu(xhat + u) * m2) * rstd, H - u));
}

// A gain/beta vector of H units (beta may be null: zeros).
template <class T>
inline Vec<T> load_opt(const T* p, int64_t u, int64_t H) {
  return p ? load_h(p, u, H) : Vec<T>{};
}

// The call's geometry and row pointers, shared by forward and backward.
template <class T>
struct LnCtx {
  static constexpr int NV = kGemmNV, MR = tile_rows(NV);
  static constexpr int64_t NR = NV * kLanes<T>;
  const LayerNormArgs<T>& a;
  const Schedule& sc;
  bool lstm;
  int G;
  int64_t H, I, Hp, NG, ld;
  int64_t Ho, Hop;                   // h's width (P with a projection, else H) and padded
  AlignedBuffer<T> zeros;            // a zero row (h0 / c0 when not given)
  std::vector<const T*> xrows;       // [rows] the x row each packed row consumes
  std::vector<T*> yrows;             // [rows] its output row in y
  std::vector<const T*> hprev;       // [rows] h_{t-1} of each packed row (Ho wide)
  // Recurrent dropout: hm holds h * mask of every packed row (Hop apart), then
  // h0 * mask of every entry b (rows + b); hrec the recurrent GEMM's row of
  // each packed row (into hm).
  AlignedBuffer<T> hm;
  std::vector<const T*> hrec;

  LnCtx(const LayerNormArgs<T>& args, const Schedule& s)
      : a(args), sc(s), lstm(args.cell == CellKind::Lstm), G(gates_of(args.cell)), H(args.H), I(args.I) {
    constexpr int L = kLanes<T>;
    Hp = (H + L - 1) / L * L;
    Ho = a.P > 0 ? a.P : H;
    Hop = (Ho + L - 1) / L * L;
    NG = G * Hp;
    ld = good_ld<T>(NG);
    zeros.zero(size_t(std::max(Hp, I) + L));
    xrows.resize(size_t(sc.rows));
    yrows.resize(size_t(sc.rows));
    hprev.resize(size_t(sc.rows));
    for (int64_t s = 0; s < sc.S; ++s)
      for (int64_t i = 0; i < sc.active[s]; ++i) {
        const int64_t r = sc.offset[s] + i, b = sc.row_b[r], t = sc.row_t[r];
        xrows[r] = a.x + (t * sc.B + b) * I;
        yrows[r] = a.y + (t * sc.B + b) * Ho;
        hprev[r] = s ? yrows[sc.offset[s - 1] + i] : (a.h0 ? a.h0 + b * Ho : zeros.data());
      }
    if (a.h_mask) {
      hm.zero(size_t((sc.rows + sc.B) * Hop));
      hrec.resize(size_t(sc.rows));
      for (int64_t b = 0; b < sc.B; ++b)
        if (a.h0)
          for (int64_t u = 0; u < Ho; ++u)
            hm.data()[(sc.rows + b) * Hop + u] = a.h0[b * Ho + u] * a.h_mask[b * Ho + u];
      for (int64_t s = 0; s < sc.S; ++s)
        for (int64_t i = 0; i < sc.active[s]; ++i) {
          const int64_t r = sc.offset[s] + i;
          hrec[r] = hm.data() + (s ? sc.offset[s - 1] + i : sc.rows + sc.row_b[r]) * Hop;
        }
    }
  }
  // The recurrent GEMM's A rows (and dW_hh's): h_{t-1}, masked under recurrent dropout.
  const std::vector<const T*>& gemm_rows() const { return a.h_mask ? hrec : hprev; }
  const T* mask_of(int64_t b) const { return a.h_mask + b * Ho; }
  // Row r's h_t * mask into hm (units u..u+L).
  void store_hm(int64_t r, int64_t u, Vec<T> h) {
    store_h(hm.data() + r * Hop, u, Ho, h * load_h(mask_of(sc.row_b[r]), u, Ho));
  }
  // The backward's hm: every row's h_t * mask from y.
  void fill_hm_from_y() {
    if (!a.h_mask) return;
    for (int64_t r = 0; r < sc.rows; ++r)
      for (int64_t u = 0; u < Hop; u += kLanes<T>) store_hm(r, u, load_h(yrows[r], u, Ho));
  }
  // Weight row of internal column k = g*Hp + u (null for the padding lanes).
  const T* wrow(const T* W, int64_t K, int64_t k) const {
    const int64_t g = k / Hp, u = k % Hp;
    return g < G && u < H ? W + (g * H + u) * K : nullptr;
  }
  // Padded internal columns of the recurrent GEMM: whole NR-wide panels.
  int64_t npanels_fwd() const { return (NG + NR - 1) / NR; }
  int64_t npanels_bwd() const { return (Hop + NR - 1) / NR; }
  // The projection's panels: forward over h~'s P columns, backward over dm's H.
  int64_t npanels_proj_fwd() const { return (Ho + NR - 1) / NR; }
  int64_t npanels_proj_bwd() const { return (Hp + NR - 1) / NR; }
};

// Copies a step_tiles tile (m rows of NR) into rows i0.. of `out` at column col0.
template <class T, int64_t NR>
inline void store_tile(const T* tile, int m, int64_t i0, T* out, int64_t ldo, int64_t col0) {
  for (int r = 0; r < m; ++r) std::memcpy(out + (i0 + r) * ldo + col0, tile + r * NR, sizeof(T) * size_t(NR));
}

// ---------------------------------------------------------------- forward --

// Whether a call projects (the LSTM's W_hr): the drivers below are compiled
// with and without it too.
template <class T>
inline bool ln_has_projection(const LayerNormArgs<T>& a) {
  return a.cell == CellKind::Lstm && a.P > 0;
}

// Whether a call has any of the masks (recurrent dropout, zoneout): the
// drivers below are compiled with and without them, so the maskless path
// carries none of their tests.
template <class T>
inline bool ln_has_masks(const LayerNormArgs<T>& a) {
  return a.h_mask || a.zoneout_h || (a.cell == CellKind::Lstm && a.zoneout_c);
}

template <class T, bool MASKS, bool PROJ>
void ln_forward_run(const LayerNormArgs<T>& a, LnWorkspace<T>& w, bool training, int nthreads) {
  constexpr int L = kLanes<T>;
  using C = LnCtx<T>;
  const Schedule& sc = w.sched;
  if (sc.rows == 0) return;
  C f(a, sc);
  const int G = f.G;
  const int64_t H = f.H, Hp = f.Hp, NG = f.NG, ld = f.ld, rows = sc.rows, B = sc.B, Ho = f.Ho;
  w.Hp = Hp, w.ld = ld;
  // xhat_ih holds the raw projection first and is normalised in place. The
  // GEMM never writes the padding lanes (H..Hp of each block), so with any
  // the buffer starts zeroed (zeros, not garbage, there). Every other saved
  // buffer is written whole, padding lanes included, for every row: no fill
  // (at B=32 T=100 H=256 the fills were ~50 MB per call).
  AlignedBuffer<T> xi_local, rstd_ih_local;
  AlignedBuffer<T>& xi = training ? w.xhat_ih : xi_local;
  AlignedBuffer<T>& rstd_ih = training ? w.rstd_ih : rstd_ih_local;
  if (Hp != H)
    xi.zero(size_t(rows * ld));
  else
    xi.reserve(size_t(rows * ld));
  rstd_ih.reserve(size_t(rows * G));
  if (training) {
    w.xhat_hh.reserve(size_t(rows * ld));
    w.gates.reserve(size_t(rows * ld));
    w.rstd_hh.reserve(size_t(rows * G));
    if (f.lstm) {
      w.c.reserve(size_t(rows * Hp)), w.xhat_c.reserve(size_t(rows * Hp)), w.tanh_c.reserve(size_t(rows * Hp));
      w.rstd_c.reserve(size_t(rows));
    }
    if constexpr (PROJ) w.m.reserve(size_t(rows * Hp));
  }
  const int64_t npan = f.npanels_fwd(), Npad = npan * C::NR, ldgh = good_ld<T>(Npad);
  AlignedBuffer<T> panels(size_t(npan * Ho * C::NR)), gh(size_t(B * ldgh)), cstate;
  cstate.zero(size_t(B * Hp));
  if (f.lstm && a.c0)
    for (int64_t i = 0; i < B; ++i)
      for (int64_t u = 0; u < Hp; u += L) storeu(cstate.data() + i * Hp + u, load_h(a.c0 + sc.order[i] * H, u, H));
  std::vector<const T*> whh_cols(static_cast<size_t>(Npad)), wih_cols(static_cast<size_t>(NG));
  for (int64_t k = 0; k < Npad; ++k) whh_cols[k] = f.wrow(a.W_hh, Ho, k);
  for (int64_t k = 0; k < NG; ++k) wih_cols[k] = f.wrow(a.W_ih, f.I, k);
  // Projection: W_hr^T's column panels (the rows of W_hr, null beyond P) and,
  // without training, the step's m rows.
  const int64_t npr = PROJ ? f.npanels_proj_fwd() : 0;
  AlignedBuffer<T> rpanels, mstep;
  std::vector<const T*> whr_cols;
  if constexpr (PROJ) {
    rpanels.reserve(size_t(npr * H * C::NR));
    whr_cols.assign(size_t(npr * C::NR), nullptr);
    for (int64_t k = 0; k < Ho; ++k) whr_cols[k] = a.W_hr + k * H;
    if (!training) mstep.reserve(size_t(B * Hp));
  }
  auto mrow = [&](int64_t r, int64_t i) { return training ? w.m.data() + r * Hp : mstep.data() + i * Hp; };
  const int nth = int(std::max<int64_t>(1, std::min<int64_t>(nthreads, npan)));
  const std::vector<const T*>& hrows = f.gemm_rows();
  const T *zo_h = MASKS ? a.zoneout_h : nullptr, *zo_c = MASKS && f.lstm ? a.zoneout_c : nullptr;
  const bool hmask = MASKS && a.h_mask;
  std::vector<AlignedBuffer<T>> acc_buffers = per_thread_buffers<T>(nth, size_t(((B + C::MR - 1) / C::MR) * C::MR * C::NR));
  // (gates NG, the LN of c Hp, and with zoneout of c, c~ Hp)
  std::vector<AlignedBuffer<T>> row_buffers = per_thread_buffers<T>(nth, size_t(NG + 2 * Hp));

#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t q0, q1;  // this thread's panels of W_hh^T
    split_range(npan, nt, tid, q0, q1);
    if (q1 > q0)
      pack_b<T, C::NR>(BView<T>{whh_cols.data(), false}, 0, Ho, q0 * C::NR, (q1 - q0) * C::NR,
                       panels.data() + q0 * Ho * C::NR);
    int64_t p0 = 0, p1 = 0;  // this thread's panels of W_hr^T
    if constexpr (PROJ) {
      split_range(npr, nt, tid, p0, p1);
      if (p1 > p0)
        pack_b<T, C::NR>(BView<T>{whr_cols.data(), false}, 0, H, p0 * C::NR, (p1 - p0) * C::NR,
                         rpanels.data() + p0 * H * C::NR);
    }
    // Input projection: this thread's share of the H columns of every gate block.
    {
      int64_t n0, n1;
      split_range(H, nt, tid, n0, n1);
      GemmScratch<T> scratch;
      for (int g = 0; g < G && n1 > n0; ++g)
        gemm<T>(rows, n1 - n0, f.I, AView<T>{f.xrows.data()}, BView<T>{wih_cols.data() + g * Hp + n0, false},
                CView<T>{nullptr, xi.data() + g * Hp + n0, ld}, nullptr, false, scratch);
    }
#pragma omp barrier
    {
      int64_t r0, r1;
      split_range(rows, nt, tid, r0, r1);
      for (int64_t r = r0; r < r1; ++r)
        for (int g = 0; g < G; ++g) {
          T* v = xi.data() + r * ld + g * Hp;
          rstd_ih.data()[r * G + g] = ln_block_forward(v, H, Hp, v);
        }
    }
    AlignedBuffer<T>& acc = acc_buffers[size_t(tid)];
    AlignedBuffer<T>& scratch_row = row_buffers[size_t(tid)];
    for (int64_t s = 0; s < sc.S; ++s) {
      const int64_t off = sc.offset[s], n = sc.active[s];
#pragma omp barrier
      // (a) gh = h_{t-1} W_hh^T, this thread's column panels.
      for (int64_t q = q0; q < q1; ++q)
        step_tiles<T, C::MR, C::NV>(
            n, Ho, panels.data() + q * Ho * C::NR, [&](int64_t i) { return hrows[off + i]; },
            [&](int64_t i0, int m, const T* tile) { store_tile<T, C::NR>(tile, m, i0, gh.data(), ldgh, q * C::NR); },
            acc.data());
#pragma omp barrier
      // (b) per row: LN of gh, gates, state update.
      int64_t i0, i1;
      split_range(n, nt, tid, i0, i1);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = off + i;
        T* ghr = gh.data() + i * ldgh;
        T* xh = training ? w.xhat_hh.data() + r * ld : ghr;  // normalised in place when not saved
        T* gates = training ? w.gates.data() + r * ld : scratch_row.data();
        for (int g = 0; g < G; ++g) {
          const T rs = ln_block_forward(ghr + g * Hp, H, Hp, xh + g * Hp);
          if (training) w.rstd_hh.data()[r * G + g] = rs;
        }
        const T* xir = xi.data() + r * ld;
        // Normalised pre-activation of block g at unit u: input side + hidden side.
        auto gi = [&](int g, int64_t u) {
          return loadu(xir + g * Hp + u) * load_h(a.ln_ih + g * H, u, H) + load_opt(a.b_ih ? a.b_ih + g * H : nullptr, u, H);
        };
        auto ghn = [&](int g, int64_t u) {
          return loadu(xh + g * Hp + u) * load_h(a.ln_hh + g * H, u, H) + load_opt(a.b_hh ? a.b_hh + g * H : nullptr, u, H);
        };
        if (f.lstm) {
          T* c = cstate.data() + i * Hp;
          // c~ = f c_{t-1} + i g, which h~ reads through its LN (Krueger et al. 2016); with zoneout of c
          // the state c_t = m c_{t-1} + (1 - m) c~ differs from it, and c~ waits in the scratch row
          T* ct = zo_c ? scratch_row.data() + NG + Hp : c;
          for (int64_t u = 0; u < Hp; u += L) {
            Vec<T> ig = sigmoid(gi(0, u) + ghn(0, u)), fg = sigmoid(gi(1, u) + ghn(1, u));
            Vec<T> gg = tanh_approx(gi(2, u) + ghn(2, u)), og = sigmoid(gi(3, u) + ghn(3, u));
            storeu(gates + u, ig), storeu(gates + Hp + u, fg), storeu(gates + 2 * Hp + u, gg);
            storeu(gates + 3 * Hp + u, og);
            const Vec<T> cn = fg * loadu(c + u) + ig * gg;
            if (zo_c) {
              const Vec<T> mc = load_h(time_major_row(zo_c, sc, r, H), u, H);
              storeu(c + u, keep_first<T>(mc * loadu(c + u) + (T(1) - mc) * cn, H - u));
            }
            storeu(ct + u, keep_first<T>(cn, H - u));
          }
          T* xc = training ? w.xhat_c.data() + r * Hp : scratch_row.data() + NG;
          const T rc = ln_block_forward(ct, H, Hp, xc);
          if (training) {
            w.rstd_c.data()[r] = rc;
            std::memcpy(w.c.data() + r * Hp, c, sizeof(T) * size_t(Hp));
          }
          for (int64_t u = 0; u < Hp; u += L) {
            Vec<T> tc = tanh_approx(loadu(xc + u) * load_h(a.ln_c_weight, u, H) + load_opt(a.ln_c_bias, u, H));
            if (training) storeu(w.tanh_c.data() + r * Hp + u, tc);
            Vec<T> h = loadu(gates + 3 * Hp + u) * tc;
            if constexpr (PROJ) {
              storeu(mrow(r, i) + u, h);  // projected in phase (c)
            } else {
              if (zo_h) {
                const Vec<T> m = load_h(time_major_row(zo_h, sc, r, H), u, H);
                h = m * load_h(f.hprev[r], u, H) + (T(1) - m) * h;
              }
              store_h(f.yrows[r], u, H, h);
              if (hmask) f.store_hm(r, u, h);
            }
          }
        } else {
          const T* hp = f.hprev[r];
          for (int64_t u = 0; u < Hp; u += L) {
            Vec<T> rg = sigmoid(gi(0, u) + ghn(0, u)), zg = sigmoid(gi(1, u) + ghn(1, u));
            Vec<T> ng = tanh_approx(gi(2, u) + rg * ghn(2, u));
            storeu(gates + u, rg), storeu(gates + Hp + u, zg), storeu(gates + 2 * Hp + u, ng);
            const Vec<T> hpv = load_h(hp, u, H);
            Vec<T> h = ng + zg * (hpv - ng);
            if (zo_h) {
              const Vec<T> m = load_h(time_major_row(zo_h, sc, r, H), u, H);
              h = m * hpv + (T(1) - m) * h;
            }
            store_h(f.yrows[r], u, H, h);
            if (hmask) f.store_hm(r, u, h);
          }
        }
      }
      if constexpr (PROJ) {
#pragma omp barrier
        // (c) h~ = m W_hr^T, this thread's column panels; zoneout, y and the
        // masked row in the epilogue.
        for (int64_t q = p0; q < p1; ++q)
          step_tiles<T, C::MR, C::NV>(
              n, H, rpanels.data() + q * H * C::NR, [&](int64_t i) { return (const T*)mrow(off + i, i); },
              [&](int64_t j0, int m, const T* tile) {
                for (int rr = 0; rr < m; ++rr) {
                  const int64_t r = off + j0 + rr;
                  for (int v = 0; v < C::NV; ++v) {
                    const int64_t u = q * C::NR + v * L;
                    if (u >= Ho) break;
                    Vec<T> h = loadu(tile + rr * C::NR + v * L);
                    if (zo_h) {
                      const Vec<T> mz = load_h(time_major_row(zo_h, sc, r, Ho), u, Ho);
                      h = mz * load_h(f.hprev[r], u, Ho) + (T(1) - mz) * h;
                    }
                    store_h(f.yrows[r], u, Ho, h);
                    if (hmask) f.store_hm(r, u, h);
                  }
                }
              },
              acc.data());
      }
    }
#pragma omp barrier
    // h_n, c_n: each entry's state after its own last step.
    int64_t i0, i1;
    split_range(B, nt, tid, i0, i1);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = sc.order[i];
      std::memcpy(a.h_n + b * Ho, f.yrows[sc.offset[sc.len[i] - 1] + i], sizeof(T) * size_t(Ho));
      if (f.lstm && a.c_n) std::memcpy(a.c_n + b * H, cstate.data() + i * Hp, sizeof(T) * size_t(H));
    }
  }
}

template <class T>
void ln_forward_impl(const LayerNormArgs<T>& a, LnWorkspace<T>& w, bool training, int nthreads) {
  const bool masks = ln_has_masks(a);
  if (ln_has_projection(a)) {
    if (masks)
      ln_forward_run<T, true, true>(a, w, training, nthreads);
    else
      ln_forward_run<T, false, true>(a, w, training, nthreads);
  } else if (masks) {
    ln_forward_run<T, true, false>(a, w, training, nthreads);
  } else {
    ln_forward_run<T, false, false>(a, w, training, nthreads);
  }
}

// ---------------------------------------------------------------- backward --

// Column sums over all rows of p (stride ldp) times q (or of p alone when q is
// null) for internal columns [k0, k1) (whole vectors), into out at the
// unpadded index; rows ascending.
template <class T>
void ln_column_sums(const T* p, const T* q, int64_t ldp, int64_t rows, int64_t Hp, int64_t H, int64_t k0, int64_t k1,
                    T* out) {
  constexpr int L = kLanes<T>;
  if (!out || k0 >= k1) return;
  std::vector<Vec<T>> acc(size_t((k1 - k0) / L), Vec<T>{});
  for (int64_t r = 0; r < rows; ++r) {
    const T* pr = p + r * ldp;
    const T* qr = q ? q + r * ldp : nullptr;
    for (int64_t k = k0; k < k1; k += L) acc[(k - k0) / L] += q ? loadu(pr + k) * loadu(qr + k) : loadu(pr + k);
  }
  for (int64_t k = k0; k < k1; k += L) {
    const int64_t g = k / Hp, u = k % Hp;
    store_h(out + g * H, u, H, acc[(k - k0) / L]);
  }
}

// dW [G*H, N] = A^T Brows where A's columns are internal (gate-major, Hp wide)
// columns of a [rows, lda] buffer; this thread's share of dW's rows, in whole
// MR tiles (like driver.h weight_grad).
template <class T>
void ln_weight_grad(const LnCtx<T>& f, const T* A, int64_t lda, const std::vector<const T*>& brows, int64_t N,
                    T* dW, int tid, int nt, GemmScratch<T>& s) {
  int64_t m0, m1;
  split_range((f.NG + kGemmMR - 1) / kGemmMR, nt, tid, m0, m1);
  m0 *= kGemmMR, m1 = std::min(f.NG, m1 * kGemmMR);
  if (m0 >= m1) return;
  std::vector<T*> crows(size_t(m1 - m0));
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t g = m / f.Hp, u = m % f.Hp;
    crows[m - m0] = u < f.H ? dW + (g * f.H + u) * N : nullptr;
  }
  gemm<T>(m1 - m0, N, f.sc.rows, AView<T>{nullptr, A + m0, 1, lda}, BView<T>{brows.data(), true},
          CView<T>{crows.data()}, nullptr, false, s);
}

template <class T, bool MASKS, bool PROJ>
void ln_backward_run(const LnWorkspace<T>& w, const LayerNormArgs<T>& a, const LayerNormGrads<T>& g,
                     int nthreads) {
  constexpr int L = kLanes<T>;
  using C = LnCtx<T>;
  const Schedule& sc = w.sched;
  if (sc.rows == 0) return;
  C f(a, sc);
  f.fill_hm_from_y();
  const int G = f.G;
  const bool lstm = f.lstm;
  const T *zo_h = MASKS ? a.zoneout_h : nullptr, *zo_c = MASKS && lstm ? a.zoneout_c : nullptr;
  const bool hmask = MASKS && a.h_mask;
  const int64_t H = f.H, Hp = f.Hp, ld = f.ld, rows = sc.rows, B = sc.B, Ho = f.Ho, Hop = f.Hop;
  // dA: dL/d LN(W_ih x) per row; dAh: dL/d LN(W_hh h) (the same for the LSTM);
  // dGh: dL/d(W_hh h); dCN (LSTM): dL/d LN_1(c).
  // Each is written whole (padding lanes included) for every row before it is read: no fill.
  AlignedBuffer<T> dA(size_t(rows * ld)), dAh_own, dGh(size_t(rows * ld)), dCN;
  if (!lstm) dAh_own.reserve(size_t(rows * ld));
  T* dAh = lstm ? dA.data() : dAh_own.data();
  if (lstm) dCN.reserve(size_t(rows * Hp));
  const int64_t npan = f.npanels_bwd(), Hpad = npan * C::NR, ldrec = good_ld<T>(Hpad);
  AlignedBuffer<T> panels(size_t(npan * f.NG * C::NR)), dh_rec, carry_h, carry_c;
  dh_rec.zero(size_t(B * ldrec)), carry_h.zero(size_t(B * Hop)), carry_c.zero(size_t(B * Hp));
  // Projection: dH (dL/dh~ of every row, P wide, Hop apart), dm (the step's
  // dL/dm = dH W_hr, [B, lddm]) and W_hr's column panels.
  const int64_t npr = PROJ ? f.npanels_proj_bwd() : 0, lddm = good_ld<T>(npr * C::NR);
  AlignedBuffer<T> dH, dm, rpanels;
  if constexpr (PROJ) {
    dH.reserve(size_t(rows * Hop));
    dm.reserve(size_t(B * lddm));
    rpanels.reserve(size_t(npr * Hop * C::NR));
  }
  std::vector<const T*> c_prev(static_cast<size_t>(rows));  // c_{t-1} of each packed row (LSTM)
  AlignedBuffer<T> c0p;
  if (lstm) {
    c0p.zero(size_t(B * Hp));
    if (a.c0)
      for (int64_t i = 0; i < B; ++i)
        for (int64_t u = 0; u < Hp; u += L) storeu(c0p.data() + i * Hp + u, load_h(a.c0 + sc.order[i] * H, u, H));
    for (int64_t s = 0; s < sc.S; ++s)
      for (int64_t i = 0; i < sc.active[s]; ++i)
        c_prev[sc.offset[s] + i] = s ? w.c.data() + (sc.offset[s - 1] + i) * Hp : c0p.data() + i * Hp;
  }
  std::vector<const T*> wih_rows(size_t(f.NG));
  for (int64_t k = 0; k < f.NG; ++k) wih_rows[k] = f.wrow(a.W_ih, f.I, k);
  static const int kAll[4] = {0, 1, 2, 3};
  const int nth = int(std::max<int64_t>(1, std::min<int64_t>(nthreads, std::max<int64_t>({npan, npr, 2}))));
  std::vector<AlignedBuffer<T>> acc_buffers = per_thread_buffers<T>(nth, size_t(((B + C::MR - 1) / C::MR) * C::MR * C::NR));

#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t q0, q1;
    split_range(npan, nt, tid, q0, q1);
    // W_hh by rows, K = the internal G*Hp columns of dGh
    pack_backward_panels<T, C::NR>(a.W_hh, H, Ho, Hp, kAll, G, q0, q1,
                         [&](int64_t q) { return panels.data() + q * f.NG * C::NR; });
    int64_t p0 = 0, p1 = 0;  // this thread's panels of W_hr (by rows, K = the Hop columns of dH)
    if constexpr (PROJ) {
      split_range(npr, nt, tid, p0, p1);
      pack_backward_panels<T, C::NR>(a.W_hr, Ho, H, Hop, kAll, 1, p0, p1,
                           [&](int64_t q) { return rpanels.data() + q * Hop * C::NR; });
    }
    AlignedBuffer<T>& acc = acc_buffers[size_t(tid)];
#pragma omp barrier
    for (int64_t s = sc.S - 1; s >= 0; --s) {
      const int64_t off = sc.offset[s], n = sc.active[s], nn = s + 1 < sc.S ? sc.active[s + 1] : 0;
      int64_t i0, i1;
      split_range(n, nt, tid, i0, i1);
      // dL/dh_t (Ho wide) for units u of entry i (row r); under zoneout, the
      // cell's share ((1 - m) of it, returned) and the direct one (m of it,
      // into carry_h: *skip).
      auto dh_at = [&](int64_t i, int64_t r, int64_t u, Vec<T>* skip) {
        const int64_t b = sc.row_b[r], t = sc.row_t[r];
        Vec<T> d;
        if (i >= nn) {  // the entry's last step: dh_n enters here
          d = load_opt(g.dh_n ? g.dh_n + b * Ho : nullptr, u, Ho);
        } else {
          Vec<T> rec = loadu(dh_rec.data() + i * ldrec + u);
          if (hmask) rec *= load_h(f.mask_of(b), u, Ho);
          d = rec + loadu(carry_h.data() + i * Hop + u);
        }
        if (g.dy) d += load_h(g.dy + (t * B + b) * Ho, u, Ho);
        if (zo_h) {
          *skip = load_h(time_major_row(zo_h, sc, r, Ho), u, Ho) * d;
          d -= *skip;
        }
        return d;
      };
      if constexpr (PROJ) {
        // (a0) dL/dh~_t per row into dH; (a1) dm = dH W_hr for the step's rows.
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t r = off + i;
          T* ch = carry_h.data() + i * Hop;
          for (int64_t u = 0; u < Hop; u += L) {
            Vec<T> skip{};
            const Vec<T> d = dh_at(i, r, u, &skip);
            if (zo_h) storeu(ch + u, skip);
            storeu(dH.data() + r * Hop + u, d);
          }
        }
#pragma omp barrier
        for (int64_t q = p0; q < p1; ++q)
          step_tiles<T, C::MR, C::NV>(
              n, Hop, rpanels.data() + q * Hop * C::NR, [&](int64_t i) { return (const T*)dH.data() + (off + i) * Hop; },
              [&](int64_t j0, int m, const T* tile) { store_tile<T, C::NR>(tile, m, j0, dm.data(), lddm, q * C::NR); },
              acc.data());
#pragma omp barrier
      }
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = off + i, b = sc.row_b[r];
        const bool last = i >= nn;  // the entry's last step: dh_n, dc_n enter here
        const T* gates = w.gates.data() + r * ld;
        T* da = dA.data() + r * ld;
        T* dah = dAh + r * ld;
        T* ch = carry_h.data() + i * Hop;
        if (lstm) {
          const T* tc = w.tanh_c.data() + r * Hp;
          const T* xc = w.xhat_c.data() + r * Hp;
          T* dcn = dCN.data() + r * Hp;
          for (int64_t u = 0; u < Hp; u += L) {
            Vec<T> dh;
            if constexpr (PROJ) {
              dh = loadu(dm.data() + i * lddm + u);
            } else {
              Vec<T> skip{};
              dh = dh_at(i, r, u, &skip);
              if (zo_h) storeu(ch + u, skip);
            }
            const Vec<T> o = loadu(gates + 3 * Hp + u), tcv = loadu(tc + u);
            storeu(da + 3 * Hp + u, dh * tcv * o * (T(1) - o));
            storeu(dcn + u, keep_first<T>(dh * o * (T(1) - tcv * tcv), H - u));
          }
          T* dcl = dGh.data() + r * ld;  // scratch for dL/dc' through the LN (overwritten below)
          ln_block_backward(dcn, xc, w.rstd_c.data()[r], a.ln_c_weight, H, Hp, dcl);
          const T* cp = c_prev[r];
          T* cc = carry_c.data() + i * Hp;
          for (int64_t u = 0; u < Hp; u += L) {
            Vec<T> dct = last ? load_opt(g.dc_n ? g.dc_n + b * H : nullptr, u, H) : loadu(cc + u);  // dL/dc_t
            Vec<T> dc_direct{};  // zoneout of c: c_{t-1} gets m dL/dc_t directly, c~_t the rest
            if (zo_c) {
              dc_direct = load_h(time_major_row(zo_c, sc, r, H), u, H) * dct;
              dct -= dc_direct;
            }
            Vec<T> dc = loadu(dcl + u) + dct;  // dL/dc~_t
            Vec<T> ig = loadu(gates + u), fg = loadu(gates + Hp + u), gg = loadu(gates + 2 * Hp + u);
            storeu(da + u, dc * gg * ig * (T(1) - ig));
            storeu(da + Hp + u, dc * loadu(cp + u) * fg * (T(1) - fg));
            storeu(da + 2 * Hp + u, dc * ig * (T(1) - gg * gg));
            storeu(cc + u, zo_c ? dc * fg + dc_direct : dc * fg);
          }
        } else {
          const T* hp = f.hprev[r];
          const T* xn = w.xhat_hh.data() + r * ld + 2 * Hp;
          for (int64_t u = 0; u < Hp; u += L) {
            Vec<T> skip{};
            Vec<T> dh = dh_at(i, r, u, &skip), rg = loadu(gates + u), zg = loadu(gates + Hp + u), ng = loadu(gates + 2 * Hp + u);
            Vec<T> ghn = loadu(xn + u) * load_h(a.ln_hh + 2 * H, u, H) + load_opt(a.b_hh ? a.b_hh + 2 * H : nullptr, u, H);
            Vec<T> dn = dh * (T(1) - zg) * (T(1) - ng * ng);
            Vec<T> dz = dh * (load_h(hp, u, H) - ng) * zg * (T(1) - zg);
            Vec<T> dr = dn * ghn * rg * (T(1) - rg);
            storeu(da + u, dr), storeu(da + Hp + u, dz), storeu(da + 2 * Hp + u, dn);
            storeu(dah + u, dr), storeu(dah + Hp + u, dz), storeu(dah + 2 * Hp + u, dn * rg);
            storeu(ch + u, zo_h ? dh * zg + skip : dh * zg);
          }
        }
        // Through the hidden-side LN, block by block, to dL/d(W_hh h).
        for (int gg = 0; gg < G; ++gg)
          ln_block_backward(dah + gg * Hp, w.xhat_hh.data() + r * ld + gg * Hp, w.rstd_hh.data()[r * G + gg],
                            a.ln_hh + gg * H, H, Hp, dGh.data() + r * ld + gg * Hp);
      }
#pragma omp barrier
      // dh_rec = dGh W_hh for the step's rows: the recurrent part of dL/dh_{t-1}.
      for (int64_t q = q0; q < q1; ++q)
        step_tiles<T, C::MR, C::NV>(
            n, f.NG, panels.data() + q * f.NG * C::NR, [&](int64_t i) { return (const T*)dGh.data() + (off + i) * ld; },
            [&](int64_t j0, int m, const T* tile) { store_tile<T, C::NR>(tile, m, j0, dh_rec.data(), ldrec, q * C::NR); },
            acc.data());
#pragma omp barrier
    }
    {  // dh0, dc0 (every entry is active at step 0)
      int64_t i0, i1;
      split_range(B, nt, tid, i0, i1);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = sc.order[i];
        for (int64_t u = 0; u < Hop && g.dh0; u += L) {
          Vec<T> rec = loadu(dh_rec.data() + i * ldrec + u);
          if (hmask) rec *= load_h(f.mask_of(b), u, Ho);
          store_h(g.dh0 + b * Ho, u, Ho, rec + loadu(carry_h.data() + i * Hop + u));
        }
        for (int64_t u = 0; u < Hp && lstm && g.dc0; u += L)
          store_h(g.dc0 + b * H, u, H, loadu(carry_c.data() + i * Hp + u));
      }
    }
    {  // gains' and betas' gradients: column sums over rows, split by column vectors
      int64_t v0, v1;
      split_range(f.NG / L, nt, tid, v0, v1);
      ln_column_sums(dA.data(), w.xhat_ih.data(), ld, rows, Hp, H, v0 * L, v1 * L, g.dln_ih);
      ln_column_sums<T>(dA.data(), nullptr, ld, rows, Hp, H, v0 * L, v1 * L, g.db_ih);
      ln_column_sums(dAh, w.xhat_hh.data(), ld, rows, Hp, H, v0 * L, v1 * L, g.dln_hh);
      ln_column_sums<T>(dAh, nullptr, ld, rows, Hp, H, v0 * L, v1 * L, g.db_hh);
      if (lstm) {
        split_range(Hp / L, nt, tid, v0, v1);
        ln_column_sums(dCN.data(), w.xhat_c.data(), Hp, rows, Hp, H, v0 * L, v1 * L, g.dln_c_weight);
        ln_column_sums<T>(dCN.data(), nullptr, Hp, rows, Hp, H, v0 * L, v1 * L, g.dln_c_bias);
      }
    }
#pragma omp barrier
    {  // dA through the input-side LN, in place: dL/d(W_ih x)
      int64_t r0, r1;
      split_range(rows, nt, tid, r0, r1);
      for (int64_t r = r0; r < r1; ++r)
        for (int gg = 0; gg < G; ++gg) {
          T* d = dA.data() + r * ld + gg * Hp;
          ln_block_backward(d, w.xhat_ih.data() + r * ld + gg * Hp, w.rstd_ih.data()[r * G + gg], a.ln_ih + gg * H,
                            H, Hp, d);
        }
    }
#pragma omp barrier
    GemmScratch<T> scratch;
    {  // dx = dGi W_ih, rows split in whole MR tiles (see driver.h input_grad)
      int64_t r0, r1;
      split_range((rows + kGemmMR - 1) / kGemmMR, nt, tid, r0, r1);
      r0 *= kGemmMR, r1 = std::min(rows, r1 * kGemmMR);
      if (r1 > r0) {
        std::vector<const T*> arows(size_t(r1 - r0));
        std::vector<T*> crows(size_t(r1 - r0));
        for (int64_t r = r0; r < r1; ++r) {
          arows[r - r0] = dA.data() + r * ld;
          crows[r - r0] = g.dx + (sc.row_t[r] * B + sc.row_b[r]) * f.I;
        }
        gemm<T>(r1 - r0, f.I, f.NG, AView<T>{arows.data()}, BView<T>{wih_rows.data(), true},
                CView<T>{crows.data()}, nullptr, false, scratch);
      }
    }
    ln_weight_grad(f, dA.data(), ld, f.xrows, f.I, g.dW_ih, tid, nt, scratch);
    ln_weight_grad(f, dGh.data(), ld, f.gemm_rows(), Ho, g.dW_hh, tid, nt, scratch);
    if constexpr (PROJ) {  // dW_hr = dH^T m, this thread's rows in whole MR tiles
      int64_t m0, m1;
      split_range((Ho + kGemmMR - 1) / kGemmMR, nt, tid, m0, m1);
      m0 *= kGemmMR, m1 = std::min(Ho, m1 * kGemmMR);
      if (g.dW_hr && m1 > m0) {
        std::vector<T*> crows(size_t(m1 - m0));
        std::vector<const T*> mrows(static_cast<size_t>(rows));
        for (int64_t p = m0; p < m1; ++p) crows[p - m0] = g.dW_hr + p * H;
        for (int64_t r = 0; r < rows; ++r) mrows[r] = w.m.data() + r * Hp;
        gemm<T>(m1 - m0, H, rows, AView<T>{nullptr, dH.data() + m0, 1, Hop}, BView<T>{mrows.data(), true},
                CView<T>{crows.data()}, nullptr, false, scratch);
      }
    }
  }
}

template <class T>
void ln_backward_impl(const LnWorkspace<T>& w, const LayerNormArgs<T>& a, const LayerNormGrads<T>& g,
                      int nthreads) {
  const bool masks = ln_has_masks(a);
  if (ln_has_projection(a)) {
    if (masks)
      ln_backward_run<T, true, true>(w, a, g, nthreads);
    else
      ln_backward_run<T, false, true>(w, a, g, nthreads);
  } else if (masks) {
    ln_backward_run<T, true, false>(w, a, g, nthreads);
  } else {
    ln_backward_run<T, false, false>(w, a, g, nthreads);
  }
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
