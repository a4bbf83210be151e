// Per-cell element-wise work ("postgemm"), run on a tile of the recurrent GEMM
// while it is in L1, for one ISA level. Each function handles rows i0..i0+m of
// the entries active at step s and the hidden units of one block.
//
// Gate values saved by a training forward (Workspace::gates, per packed row,
// gate-major, groups Hp wide) are the activated ones, so backward derives the
// derivatives from them: sigmoid' = y(1-y), tanh' = 1-y^2.
#pragma once
#include "../sequence/context.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

// ---------------------------------------------------------------- forward --

// LSTM: tile [m][i f g o] x L units (biases folded into xp).
struct LstmCell {
  static constexpr int G = 4;         // gates in W_ih / W_hh
  static constexpr int kBlockVecs = 1;  // forward block: one vector of units
  static constexpr int kSaved = 4;    // saved gate groups per row
  static constexpr int kGrad = 4;     // dG groups per row: [di df dg do]
  static constexpr int kIhOff = 0, kHhOff = 0;
  static constexpr int kIhOrder[4] = {0, 1, 2, 3};
  static constexpr int kHhOrder[4] = {0, 1, 2, 3};
  static constexpr int kHhGroups = 4;

  template <class T, bool TRAIN>
  static void forward_tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u, const T* tile) {
    constexpr int L = kLanes<T>, NR = G * L;
    const int64_t Hp = f.Hp, H = f.H;
    for (int r = 0; r < m; ++r) {
      const int64_t i = i0 + r, row = f.sc.offset[s] + i;
      const T* xp = f.xp_row(row) + u;
      const T* t = tile + r * NR;
      Vec<T> ig = sigmoid(loadu(t) + loadu(xp));
      Vec<T> fg = sigmoid(loadu(t + L) + loadu(xp + Hp));
      Vec<T> gg = tanh_approx(loadu(t + 2 * L) + loadu(xp + 2 * Hp));
      Vec<T> og = sigmoid(loadu(t + 3 * L) + loadu(xp + 3 * Hp));
      T* cs = f.state.data() + i * Hp + u;
      Vec<T> c = fg * loadu(cs) + ig * gg;
      storeu(cs, c);
      if (f.a.P)
        storeu(f.m_row(row) + u, og * tanh_approx(c));  // projected after the step's barrier
      else
        f.emit_h(row, u, og * tanh_approx(c));
      if (TRAIN) {
        T* g = f.ws->gates_row(row) + u;
        storeu(g, ig), storeu(g + Hp, fg), storeu(g + 2 * Hp, gg), storeu(g + 3 * Hp, og);
        storeu(f.ws->extra_row(row) + u, c);
      }
    }
  }

  template <class T>
  static void backward_unit(BwdCtx<T>& b, int64_t s, int64_t i, int64_t row, int64_t u, Vec<T> dh) {
    const int64_t Hp = b.Hp;
    const T* g = b.ws.gates_row(row) + u;
    Vec<T> ig = loadu(g), fg = loadu(g + Hp), gg = loadu(g + 2 * Hp), og = loadu(g + 3 * Hp);
    Vec<T> c = loadu(b.ws.extra_row(row) + u);
    Vec<T> cprev = s > 0 ? loadu(b.ws.extra_row(b.sc.offset[s - 1] + i) + u)
                         : load_h(b.c0row(i), u, b.H);
    Vec<T> tc = tanh_approx(c);
    T* carry = b.carry.data() + i * Hp + u;
    Vec<T> dc = loadu(carry) + dh * og * (T(1) - tc * tc);
    T* d = b.dG_row(row) + u;
    storeu(d, dc * gg * ig * (T(1) - ig));
    storeu(d + Hp, dc * cprev * fg * (T(1) - fg));
    storeu(d + 2 * Hp, dc * ig * (T(1) - gg * gg));
    storeu(d + 3 * Hp, dh * tc * og * (T(1) - og));
    storeu(carry, dc * fg);
  }
  // LSTM's h carries nothing directly to h_{t-1}: all of it flows through W_hh.
  static constexpr bool kDirectCarry = false;
};

// GRU, reset after (PyTorch): tile [m][r z n] x L units; b_hn is added to the
// n tile (it sits inside r*(...)), the other biases are folded into xp.
struct GruCell {
  static constexpr int G = 3;
  static constexpr int kBlockVecs = 1;
  static constexpr int kSaved = 4;  // r z n hn, hn = W_hn h + b_hn
  static constexpr int kGrad = 4;   // [dn dr dz dn*r]: ih view = [n r z], hh view = [r z n]
  static constexpr int kIhOff = 0, kHhOff = 1;
  static constexpr int kIhOrder[3] = {2, 0, 1};
  static constexpr int kHhOrder[3] = {0, 1, 2};
  static constexpr int kHhGroups = 3;

  template <class T, bool TRAIN>
  static void forward_tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u, const T* tile) {
    constexpr int L = kLanes<T>, NR = G * L;
    const int64_t Hp = f.Hp, H = f.H;
    Vec<T> bhn = loadu(f.b_hn.data() + u);
    for (int r = 0; r < m; ++r) {
      const int64_t i = i0 + r, row = f.sc.offset[s] + i;
      const T* xp = f.xp_row(row) + u;
      const T* t = tile + r * NR;
      Vec<T> rg = sigmoid(loadu(t) + loadu(xp));
      Vec<T> zg = sigmoid(loadu(t + L) + loadu(xp + Hp));
      Vec<T> hn = loadu(t + 2 * L) + bhn;
      Vec<T> ng = tanh_approx(loadu(xp + 2 * Hp) + rg * hn);
      Vec<T> hp = load_h(f.hprev[row], u, H);
      f.emit_h(row, u, ng + zg * (hp - ng));
      if (TRAIN) {
        T* g = f.ws->gates_row(row) + u;
        storeu(g, rg), storeu(g + Hp, zg), storeu(g + 2 * Hp, ng), storeu(g + 3 * Hp, hn);
      }
    }
  }

  template <class T>
  static void backward_unit(BwdCtx<T>& b, int64_t, int64_t i, int64_t row, int64_t u, Vec<T> dh) {
    const int64_t Hp = b.Hp;
    const T* g = b.ws.gates_row(row) + u;
    Vec<T> rg = loadu(g), zg = loadu(g + Hp), ng = loadu(g + 2 * Hp), hn = loadu(g + 3 * Hp);
    Vec<T> hp = load_h(b.hprev[row], u, b.H);
    Vec<T> dn = dh * (T(1) - zg) * (T(1) - ng * ng);
    T* d = b.dG_row(row) + u;
    storeu(d, dn);
    storeu(d + Hp, dn * hn * rg * (T(1) - rg));
    storeu(d + 2 * Hp, dh * (hp - ng) * zg * (T(1) - zg));
    storeu(d + 3 * Hp, dn * rg);
    storeu(b.carry.data() + i * Hp + u, dh * zg);
  }
  static constexpr bool kDirectCarry = true;  // h' = ... + z*h
};

// Elman RNN: h' = act(xp + W_hh h); a block is several vectors of units so the
// tile is as wide as the others.
template <bool RELU>
struct RnnCell {
  static constexpr int G = 1;
  static constexpr int kBlockVecs = PYRNN_NREGS >= 32 ? 4 : 2;
  static constexpr int kSaved = 0;
  static constexpr int kGrad = 1;
  static constexpr int kIhOff = 0, kHhOff = 0;
  static constexpr int kIhOrder[1] = {0};
  static constexpr int kHhOrder[1] = {0};
  static constexpr int kHhGroups = 1;

  template <class T>
  static Vec<T> act(Vec<T> x) {
    if constexpr (RELU)
      return relu<T>(x);
    else
      return tanh_approx(x);
  }

  template <class T, bool TRAIN>
  static void forward_tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u0, const T* tile) {
    constexpr int L = kLanes<T>, NR = kBlockVecs * L;
    const int64_t Hp = f.Hp, H = f.H;
    for (int r = 0; r < m; ++r) {
      const int64_t row = f.sc.offset[s] + i0 + r;
      const T* xp = f.xp_row(row);
      for (int c = 0; c < kBlockVecs && u0 + c * L < Hp; ++c) {
        int64_t u = u0 + c * L;
        f.emit_h(row, u, act<T>(loadu(tile + r * NR + c * L) + loadu(xp + u)));
      }
    }
  }

  template <class T>
  static void backward_unit(BwdCtx<T>& b, int64_t, int64_t, int64_t row, int64_t u, Vec<T> dh) {
    Vec<T> h = load_h(b.yrows[row], u, b.H);
    Vec<T> d;
    if constexpr (RELU)
      d = h > Vec<T>{} ? dh : Vec<T>{};
    else
      d = dh * (T(1) - h * h);
    storeu(b.dG_row(row) + u, d);
  }
  static constexpr bool kDirectCarry = false;
};

// GRU, reset before (Cho et al. v3): two GEMMs per step, since W_hn multiplies
// r*h and r needs the whole h first. Phase 1 tile [m][r z], phase 2 [m][n].
struct GruResetBeforeCell {
  static constexpr int G = 3;
  static constexpr int kSaved = 3;  // r z n; r*h_{t-1} in Workspace::extra
  static constexpr int kGrad = 3;   // [dr dz dn], same for ih and hh
  static constexpr int kIhOrder[3] = {0, 1, 2};

  template <class T, bool TRAIN>
  static void forward_rz(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u, const T* tile) {
    constexpr int L = kLanes<T>, NR = 2 * L;
    const int64_t Hp = f.Hp, H = f.H;
    for (int r = 0; r < m; ++r) {
      const int64_t i = i0 + r, row = f.sc.offset[s] + i;
      const T* xp = f.xp_row(row) + u;
      Vec<T> rg = sigmoid(loadu(tile + r * NR) + loadu(xp));
      Vec<T> zg = sigmoid(loadu(tile + r * NR + L) + loadu(xp + Hp));
      Vec<T> rh = rg * load_h(f.arow[row], u, H);  // r * (h_{t-1} * mask)
      storeu(f.rh_row(s, i) + u, rh);
      if (TRAIN) {
        T* g = f.ws->gates_row(row) + u;
        storeu(g, rg), storeu(g + Hp, zg);
      } else {
        storeu(f.state.data() + i * Hp + u, zg);
      }
    }
  }

  template <class T, bool TRAIN>
  static void forward_n(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u, const T* tile) {
    constexpr int L = kLanes<T>;
    const int64_t Hp = f.Hp, H = f.H;
    for (int r = 0; r < m; ++r) {
      const int64_t i = i0 + r, row = f.sc.offset[s] + i;
      const T* xp = f.xp_row(row) + u;
      Vec<T> ng = tanh_approx(loadu(tile + r * L) + loadu(xp + 2 * Hp));
      T* g = TRAIN ? f.ws->gates_row(row) + u : nullptr;
      Vec<T> zg = TRAIN ? loadu(g + Hp) : loadu(f.state.data() + i * Hp + u);
      Vec<T> hp = load_h(f.hprev[row], u, H);
      f.emit_h(row, u, ng + zg * (hp - ng));
      if (TRAIN) storeu(g + 2 * Hp, ng);
    }
  }

  // Phase 1 of a backward step: dh arrives complete; writes dz, dn, and the
  // direct part dh*z of dh_{t-1}.
  template <class T>
  static void backward_zn(BwdCtx<T>& b, int64_t i, int64_t row, int64_t u, Vec<T> dh) {
    const int64_t Hp = b.Hp;
    const T* g = b.ws.gates_row(row) + u;
    Vec<T> zg = loadu(g + Hp), ng = loadu(g + 2 * Hp);
    Vec<T> hp = load_h(b.hprev[row], u, b.H);
    T* d = b.dG_row(row) + u;
    storeu(d + Hp, dh * (hp - ng) * zg * (T(1) - zg));
    storeu(d + 2 * Hp, dh * (T(1) - zg) * (T(1) - ng * ng));
    storeu(b.carry.data() + i * Hp + u, dh * zg);
  }
  // Phase 2: drh = dn W_hn arrives; writes dr and adds drh*r to the carry.
  template <class T>
  static void backward_r(BwdCtx<T>& b, int64_t i, int64_t row, int64_t u, Vec<T> drh) {
    const int64_t Hp = b.Hp;
    Vec<T> rg = loadu(b.ws.gates_row(row) + u);
    Vec<T> hpm = load_h(b.arow[row], u, b.H);
    storeu(b.dG_row(row) + u, drh * hpm * rg * (T(1) - rg));
    T* carry = b.carry.data() + i * Hp + u;
    storeu(carry, loadu(carry) + b.masked(drh * rg, b.sc.row_b[row], u));
  }
};

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
