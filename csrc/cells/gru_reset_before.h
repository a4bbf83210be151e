// GRU, reset before (Cho et al. v3, Keras reset_after=False), gates r, z, n:
//   n = tanh(W_in x + b_in + W_hn (r * h) + b_hn),  h' = n + z * (h - n)
// Two GEMMs per step, since W_hn multiplies r*h and r needs the whole h first:
// phase 1 tile [m][r z], phase 2 [m][n]. r*h_{t-1} is the cell's extra row.
#pragma once
#include "context.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

struct GruResetBeforeCell {
  static constexpr CellKind kKind = CellKind::GruResetBefore;
  static constexpr int G = 3;
  static constexpr int kSaved = 3;  // r z n
  static constexpr bool kExtra = true;  // r * h_{t-1}
  static constexpr int kGrad = 3;   // [dr dz dn], the same for ih and hh
  static constexpr bool kCellState = false, kDirectCarry = true, kSeparateBhn = false;
  static constexpr int kIhOff = 0, kHhOff = 0;
  static constexpr int kIhOrder[3] = {0, 1, 2}, kHhOrder[3] = {0, 1, 2};
  static constexpr int kRz[2] = {0, 1}, kN[1] = {2};
  static constexpr HhPart kHhParts[2] = {{0, 2, kRz, HhRows::Recurrent}, {2, 1, kN, HhRows::Extra}};

  struct ForwardRz : PhaseDefaults {
    static constexpr int kGates[2] = {0, 1};
    template <class T, bool TRAIN>
    static void tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u, const T* tile) {
      constexpr int L = kLanes<T>, NR = 2 * L;
      const int64_t Hp = f.Hp, H = f.H;
      for (int r = 0; r < m; ++r) {
        const int64_t i = i0 + r, row = f.sc.offset[s] + i;
        const T* xp = f.xp_row(row) + u;
        Vec<T> rg = sigmoid(loadu(tile + r * NR) + loadu(xp));
        Vec<T> zg = sigmoid(loadu(tile + r * NR + L) + loadu(xp + Hp));
        storeu(f.extra_row(s, i) + u, rg * load_h(f.arow[row], u, H));  // r * (h_{t-1} * mask)
        if (TRAIN) {
          T* g = f.ws->gates_row(row) + u;
          storeu(g, rg), storeu(g + Hp, zg);
        } else {
          storeu(f.state.data() + i * Hp + u, zg);
        }
      }
    }
  };
  struct ForwardN : PhaseDefaults {
    static constexpr int kGates[1] = {2};
    template <class T>
    static const T* a_row(FwdCtx<T>& f, int64_t s, int64_t i) {
      return f.extra_row(s, i);
    }
    template <class T, bool TRAIN>
    static void tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u, const T* tile) {
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
  };

  // Backward phase 1: dh arrives complete; writes dz, dn and the direct part
  // dh*z of dh_{t-1}.
  struct BackwardZn : PhaseDefaults {
    static constexpr int kGates[2] = {0, 1};
    template <class T>
    static void unit(BwdCtx<T>& b, int64_t, int64_t i, int64_t row, int64_t u, Vec<T> dh) {
      const int64_t Hp = b.Hp;
      const T* g = b.ws.gates_row(row) + u;
      Vec<T> zg = loadu(g + Hp), ng = loadu(g + 2 * Hp);
      Vec<T> hp = load_h(b.hprev[row], u, b.H);
      T* d = b.dG_row(row) + u;
      storeu(d + Hp, dh * (hp - ng) * zg * (T(1) - zg));
      storeu(d + 2 * Hp, dh * (T(1) - zg) * (T(1) - ng * ng));
      storeu(b.carry.data() + i * Hp + u, dh * zg);
    }
  };
  // Phase 2: drh = dn W_hn arrives; writes dr and adds drh*r to the carry.
  struct BackwardR : PhaseDefaults {
    static constexpr int kGates[1] = {2};
    template <class T>
    static const T* a_row(BwdCtx<T>& b, int64_t s, int64_t i) {
      return b.dG_row(b.sc.offset[s] + i) + 2 * b.Hp;
    }
    template <class T>
    static void unit(BwdCtx<T>& b, int64_t, int64_t i, int64_t row, int64_t u, Vec<T> drh) {
      const int64_t Hp = b.Hp;
      Vec<T> rg = loadu(b.ws.gates_row(row) + u);
      Vec<T> hpm = load_h(b.arow[row], u, b.H);
      storeu(b.dG_row(row) + u, drh * hpm * rg * (T(1) - rg));
      T* carry = b.carry.data() + i * Hp + u;
      storeu(carry, loadu(carry) + b.masked(drh * rg, b.sc.row_b[row], u));
    }
  };

  using Forward = std::tuple<ForwardRz, ForwardN>;
  using Backward = std::tuple<BackwardZn, BackwardR>;

  // One-step path: step() writes r*h; after W_hn (r*h) + b_hn is in gh's n
  // group, step_after() writes h.
  static constexpr int kStepHhGates = 2;
  template <class T>
  static void step(const StepUnit<T>& s) {
    s.set_extra(sigmoid(s.xg(0) + s.hg(0)) * s.h_prev());
  }
  template <class T>
  static void step_after(const StepUnit<T>& s) {
    Vec<T> zg = sigmoid(s.xg(1) + s.hg(1));
    Vec<T> ng = tanh_approx(s.xg(2) + s.hg(2));
    Vec<T> hp = s.h_prev();
    s.set_h(ng + zg * (hp - ng));
  }
};

template <>
struct CellOf<CellKind::GruResetBefore> {
  using type = GruResetBeforeCell;
};

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
