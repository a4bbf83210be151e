// GRU, reset after (PyTorch's, gates r, z, n): element-wise code and traits.
//   n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = n + z * (h - n)
#pragma once
#include "context.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

struct GruCell {
  static constexpr CellKind kKind = CellKind::Gru;
  static constexpr int G = 3;
  static constexpr int kSaved = 4;  // r z n hn, hn = W_hn h + b_hn
  static constexpr bool kExtra = false;
  static constexpr int kGrad = 4;   // dG: [dn dr dz dn*r]: ih view = [n r z], hh view = [r z n]
  static constexpr bool kCellState = false, kDirectCarry = true, kSeparateBhn = true;
  static constexpr int kIhOff = 0, kHhOff = 1;
  static constexpr int kIhOrder[3] = {2, 0, 1}, kHhOrder[3] = {0, 1, 2};
  static constexpr HhPart kHhParts[1] = {{1, 3, kHhOrder, HhRows::Recurrent}};

  // Tile [m][r z n] x L units; b_hn is added to the n tile (r multiplies it),
  // the other biases are folded into xp.
  struct ForwardGates : PhaseDefaults {
    static constexpr int kGates[3] = {0, 1, 2};
    template <class T, bool TRAIN>
    static void tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u, const T* tile) {
      constexpr int L = kLanes<T>, NR = G * L;
      const int64_t Hp = f.Hp, H = f.H;
      Vec<T> bhn = loadu(f.b_hn.data() + u);
      for (int r = 0; r < m; ++r) {
        const int64_t row = f.sc.offset[s] + i0 + r;
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
  };

  struct BackwardGates : PhaseDefaults {
    static constexpr int kGates[3] = {0, 1, 2};
    static constexpr int kCol0 = 1;
    template <class T>
    static void unit(BwdCtx<T>& b, int64_t, int64_t i, int64_t row, int64_t u, Vec<T> dh) {
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
  };

  using Forward = std::tuple<ForwardGates>;
  using Backward = std::tuple<BackwardGates>;

  static constexpr int kStepHhGates = 3;
  template <class T>
  static void step(const StepUnit<T>& s) {
    Vec<T> rg = sigmoid(s.xg(0) + s.hg(0)), zg = sigmoid(s.xg(1) + s.hg(1));
    Vec<T> ng = tanh_approx(s.xg(2) + rg * s.hg(2));
    Vec<T> hp = s.h_prev();
    s.set_h(ng + zg * (hp - ng));
  }
};

template <>
struct CellOf<CellKind::Gru> {
  using type = GruCell;
};

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
