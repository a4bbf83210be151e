// Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.
#pragma once
#include "context.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

template <bool RELU>
struct RnnCell {
  static constexpr CellKind kKind = RELU ? CellKind::RnnRelu : CellKind::RnnTanh;
  static constexpr int G = 1;
  static constexpr int kSaved = 0;  // h_t (y) is enough
  static constexpr bool kExtra = false;
  static constexpr int kGrad = 1;
  static constexpr bool kCellState = false, kDirectCarry = false, kSeparateBhn = false;
  static constexpr int kIhOff = 0, kHhOff = 0;
  static constexpr int kIhOrder[1] = {0}, kHhOrder[1] = {0};
  static constexpr HhPart kHhParts[1] = {{0, 1, kHhOrder, HhRows::Recurrent}};

  template <class T>
  static Vec<T> act(Vec<T> x) {
    if constexpr (RELU)
      return relu<T>(x);
    else
      return tanh_approx(x);
  }

  // A block is several vectors of units, so the tile is as wide as the others'.
  struct ForwardGates : PhaseDefaults {
    static constexpr int kGates[1] = {0};
    static constexpr int kBlockVecs = PYRNN_NREGS >= 32 ? 4 : 2;
    template <class T, bool TRAIN>
    static void tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u0, const T* tile) {
      constexpr int L = kLanes<T>, NR = kBlockVecs * L;
      for (int r = 0; r < m; ++r) {
        const int64_t row = f.sc.offset[s] + i0 + r;
        const T* xp = f.xp_row(row);
        for (int c = 0; c < kBlockVecs && u0 + c * L < f.Hp; ++c) {
          int64_t u = u0 + c * L;
          f.emit_h(row, u, act<T>(loadu(tile + r * NR + c * L) + loadu(xp + u)));
        }
      }
    }
  };

  struct BackwardGates : PhaseDefaults {
    static constexpr int kGates[1] = {0};
    template <class T>
    static void unit(BwdCtx<T>& b, int64_t, int64_t, int64_t row, int64_t u, Vec<T> dh) {
      Vec<T> h = load_h(b.yrows[row], u, b.H);
      Vec<T> d;
      if constexpr (RELU)
        d = h <= Vec<T>{} ? Vec<T>{} : dh;  // as torch: a NaN h passes the gradient (NaN included) through
      else
        d = dh * (T(1) - h * h);
      storeu(b.dG_row(row) + u, d);
    }
  };

  using Forward = std::tuple<ForwardGates>;
  using Backward = std::tuple<BackwardGates>;

  static constexpr int kStepHhGates = 1;
  template <class T>
  static void step(const StepUnit<T>& s) {
    s.set_h(act<T>(s.xg(0) + s.hg(0)));
  }
};

// Leaky-integrator tanh RNN (an echo state network's reservoir):
//   n = tanh(W_ih x + b_ih + W_hh h + b_hh),  h' = h + a (n - h),  a = ForwardArgs::leak.
struct LeakyRnnCell {
  static constexpr CellKind kKind = CellKind::RnnLeaky;
  static constexpr int G = 1;
  static constexpr int kSaved = 1;  // n: h_t no longer gives it back
  static constexpr bool kExtra = false;
  static constexpr int kGrad = 1;
  static constexpr bool kCellState = false, kDirectCarry = true, kSeparateBhn = false;
  static constexpr int kIhOff = 0, kHhOff = 0;
  static constexpr int kIhOrder[1] = {0}, kHhOrder[1] = {0};
  static constexpr HhPart kHhParts[1] = {{0, 1, kHhOrder, HhRows::Recurrent}};

  struct ForwardGates : PhaseDefaults {
    static constexpr int kGates[1] = {0};
    static constexpr int kBlockVecs = RnnCell<false>::ForwardGates::kBlockVecs;
    template <class T, bool TRAIN>
    static void tile(FwdCtx<T>& f, int64_t s, int64_t i0, int m, int64_t u0, const T* tile) {
      constexpr int L = kLanes<T>, NR = kBlockVecs * L;
      const T a = f.a.leak;
      for (int r = 0; r < m; ++r) {
        const int64_t row = f.sc.offset[s] + i0 + r;
        const T* xp = f.xp_row(row);
        for (int c = 0; c < kBlockVecs && u0 + c * L < f.Hp; ++c) {
          int64_t u = u0 + c * L;
          Vec<T> n = tanh_approx(loadu(tile + r * NR + c * L) + loadu(xp + u));
          Vec<T> hp = load_h(f.hprev[row], u, f.H);
          f.emit_h(row, u, hp + a * (n - hp));
          if (TRAIN) storeu(f.ws->gates_row(row) + u, n);
        }
      }
    }
  };

  struct BackwardGates : PhaseDefaults {
    static constexpr int kGates[1] = {0};
    template <class T>
    static void unit(BwdCtx<T>& b, int64_t, int64_t i, int64_t row, int64_t u, Vec<T> dh) {
      const T a = b.a.leak;
      Vec<T> n = loadu(b.ws.gates_row(row) + u);
      storeu(b.dG_row(row) + u, a * dh * (T(1) - n * n));
      storeu(b.carry.data() + i * b.Hp + u, (T(1) - a) * dh);
    }
  };

  using Forward = std::tuple<ForwardGates>;
  using Backward = std::tuple<BackwardGates>;

  static constexpr int kStepHhGates = 1;
  template <class T>
  static void step(const StepUnit<T>& s) {
    Vec<T> hp = s.h_prev();
    s.set_h(hp + s.leak * (tanh_approx(s.xg(0) + s.hg(0)) - hp));
  }
};

template <>
struct CellOf<CellKind::RnnLeaky> {
  using type = LeakyRnnCell;
};

template <>
struct CellOf<CellKind::RnnTanh> {
  using type = RnnCell<false>;
};
template <>
struct CellOf<CellKind::RnnRelu> {
  using type = RnnCell<true>;
};

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
