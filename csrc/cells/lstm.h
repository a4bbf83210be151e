// LSTM (gates i, f, g, o): element-wise code and traits; with a projection
// (PyTorch's proj_size) as LstmProjectedCell.
//
// Gate values saved by a training forward are the activated ones, so
// backward derives the derivatives from them: sigmoid' = y(1-y), tanh' = 1-y^2.
#pragma once
#include "context.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

struct LstmCell {
  static constexpr CellKind kKind = CellKind::Lstm;
  static constexpr int G = 4;
  static constexpr int kSaved = 4;  // [i f g o]
  static constexpr bool kExtra = true;  // c_t
  static constexpr int kGrad = 4;   // dG: [di df dg do]
  static constexpr bool kCellState = true, kDirectCarry = false, kSeparateBhn = false;
  static constexpr int kIhOff = 0, kHhOff = 0;
  static constexpr int kIhOrder[4] = {0, 1, 2, 3}, kHhOrder[4] = {0, 1, 2, 3};
  static constexpr HhPart kHhParts[1] = {{0, 4, kHhOrder, HhRows::Recurrent}};

  // Forward tile [m][i f g o] x L units (biases folded into xp). Without a
  // projection h = o * tanh(c); with one, m = o * tanh(c) is kept for the
  // projection phase.
  struct ForwardGates : PhaseDefaults {
    static constexpr int kGates[4] = {0, 1, 2, 3};
    template <class T, bool TRAIN>
    static void tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u, const T* tile) {
      constexpr int L = kLanes<T>, NR = G * L;
      const int64_t Hp = f.Hp;
      for (int r = 0; r < m; ++r) {
        const int64_t i = i0 + r, row = f.sc.offset[s] + i;
        const T* xp = f.xp_row(row) + u;
        const T* t = tile + r * NR;
        Vec<T> ig = sigmoid(loadu(t) + loadu(xp));
        Vec<T> fg = sigmoid(loadu(t + L) + loadu(xp + Hp));
        Vec<T> gg = tanh_approx(loadu(t + 2 * L) + loadu(xp + 2 * Hp));
        Vec<T> og = sigmoid(loadu(t + 3 * L) + loadu(xp + 3 * Hp));
        T* cs = f.state.data() + i * Hp + u;
        const Vec<T> cprev = loadu(cs);
        Vec<T> c = fg * cprev + ig * gg;
        const Vec<T> hc = og * tanh_approx(c);  // from c~ (Krueger et al. 2016: h~ reads the un-zoned c~)
        if (f.a.zoneout_c) {
          const Vec<T> mc = load_h(time_major_row(f.a.zoneout_c, f.sc, row, f.H), u, f.H);
          c = mc * cprev + (T(1) - mc) * c;
        }
        storeu(cs, c);
        if (f.a.P)
          storeu(f.m_row(row) + u, hc);  // projected after the step's barrier
        else
          f.emit_h(row, u, hc);
        if (TRAIN) {
          T* g = f.ws->gates_row(row) + u;
          storeu(g, ig), storeu(g + Hp, fg), storeu(g + 2 * Hp, gg), storeu(g + 3 * Hp, og);
          storeu(f.ws->extra_row(row) + u, c);
        }
      }
    }
  };

  // Backward: dh (or dm with a projection) for units u..u+L of entry i.
  template <class T>
  static void backward_unit(BwdCtx<T>& b, int64_t s, int64_t i, int64_t row, int64_t u, Vec<T> dh) {
    const int64_t Hp = b.Hp;
    const T* g = b.ws.gates_row(row) + u;
    Vec<T> ig = loadu(g), fg = loadu(g + Hp), gg = loadu(g + 2 * Hp), og = loadu(g + 3 * Hp);
    Vec<T> c = loadu(b.ws.extra_row(row) + u);  // c_t
    Vec<T> cprev = s > 0 ? loadu(b.ws.extra_row(b.sc.offset[s - 1] + i) + u) : load_h(b.c0row(i), u, b.H);
    T* carry = b.carry.data() + i * Hp + u;
    Vec<T> dct = loadu(carry);  // dL/dc_t from step t+1
    Vec<T> dc_direct{};
    if (b.a.zoneout_c) {
      // c_t = m c_{t-1} + (1 - m) c~_t: c_{t-1} gets m dL/dc_t directly, c~_t the rest; h~_t read c~_t
      c = fg * cprev + ig * gg;
      dc_direct = load_h(time_major_row(b.a.zoneout_c, b.sc, row, b.H), u, b.H) * dct;
      dct -= dc_direct;
    }
    Vec<T> tc = tanh_approx(c);
    Vec<T> dc = dct + dh * og * (T(1) - tc * tc);  // dL/dc~_t
    T* d = b.dG_row(row) + u;
    storeu(d, dc * gg * ig * (T(1) - ig));
    storeu(d + Hp, dc * cprev * fg * (T(1) - fg));
    storeu(d + 2 * Hp, dc * ig * (T(1) - gg * gg));
    storeu(d + 3 * Hp, dh * tc * og * (T(1) - og));
    storeu(carry, dc * fg + dc_direct);
  }
  struct BackwardGates : PhaseDefaults {
    static constexpr int kGates[4] = {0, 1, 2, 3};
    template <class T>
    static void unit(BwdCtx<T>& b, int64_t s, int64_t i, int64_t row, int64_t u, Vec<T> dh) {
      backward_unit(b, s, i, row, u, dh);
    }
  };

  using Forward = std::tuple<ForwardGates>;
  using Backward = std::tuple<BackwardGates>;

  // One-step path.
  static constexpr int kStepHhGates = 4;
  template <class T>
  static void step(const StepUnit<T>& s) {
    Vec<T> ig = sigmoid(s.xg(0) + s.hg(0)), fg = sigmoid(s.xg(1) + s.hg(1));
    Vec<T> gg = tanh_approx(s.xg(2) + s.hg(2)), og = sigmoid(s.xg(3) + s.hg(3));
    Vec<T> c = fg * s.c_prev() + ig * gg;
    s.set_c(c);
    s.set_h(og * tanh_approx(c));
  }
};

// With a projection: phase 1 (blocks of H) computes c and m = o * tanh(c);
// after a barrier, phase 2 (blocks of P) h = W_hr m. Backward: phase 1
// (blocks of P) dh_t = dG_{t+1} W_hh + dy_t (+ dh_n), kept per row for
// dW_hr; phase 2 (blocks of H) dm_t = dh_t W_hr and the LSTM gradient.
struct LstmProjectedCell : LstmCell {
  struct ForwardProjection : PhaseDefaults {
    static constexpr PhaseWeights kWeights = PhaseWeights::Projection;
    static constexpr int kGates[1] = {0};
    static constexpr int kBlockVecs = kGemmNV;
    template <class T>
    static const T* a_row(FwdCtx<T>& f, int64_t s, int64_t i) {
      return f.m_row(f.sc.offset[s] + i);
    }
    template <class T, bool TRAIN>
    static void tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u0, const T* tile) {
      for_tile_vectors<T, kBlockVecs>(tile, f.sc.offset[s], i0, m, u0, f.Ho,
                                      [&](int64_t, int64_t row, int64_t u, Vec<T> h) { f.emit_h(row, u, h); });
    }
  };
  struct BackwardDh : PhaseDefaults {  // stores dh_t (complete) for phase 2 and dW_hr
    static constexpr int kGates[4] = {0, 1, 2, 3};
    template <class T>
    static void unit(BwdCtx<T>& b, int64_t, int64_t, int64_t row, int64_t u, Vec<T> dh) {
      storeu(b.dh.data() + row * b.ld_dh + u, dh);
    }
  };
  struct BackwardGates : PhaseDefaults {
    static constexpr PhaseWeights kWeights = PhaseWeights::Projection;
    static constexpr int kGates[1] = {0};
    template <class T>
    static const T* a_row(BwdCtx<T>& b, int64_t s, int64_t i) {
      return b.dh.data() + (b.sc.offset[s] + i) * b.ld_dh;
    }
    template <class T>
    static void unit(BwdCtx<T>& b, int64_t s, int64_t i, int64_t row, int64_t u, Vec<T> dm) {
      backward_unit(b, s, i, row, u, dm);
    }
  };
  using Forward = std::tuple<ForwardGates, ForwardProjection>;
  using Backward = std::tuple<BackwardDh, BackwardGates>;
};

template <>
struct CellOf<CellKind::Lstm> {
  using type = LstmCell;
  using projected = LstmProjectedCell;
};

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
