// Shared state of one forward or backward call, for one ISA level.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../gemm/gemm.h"
#include "workspace.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

// Hidden-state rows given by the caller are H wide; internal rows are Hp wide
// (whole vectors). These read and write the unpadded ones at unit u.
template <class T>
inline Vec<T> load_h(const T* row, int64_t u, int64_t H) {
  constexpr int L = kLanes<T>;
  if (u + L <= H) return loadu(row + u);
  if (u >= H) return Vec<T>{};
  return load_first(row + u, int(H - u));
}
template <class T>
inline void store_h(T* row, int64_t u, int64_t H, Vec<T> v) {
  constexpr int L = kLanes<T>;
  if (u + L <= H)
    storeu(row + u, v);
  else if (u < H)
    store_first(row + u, v, int(H - u));
}

inline void split_range(int64_t n, int nth, int tid, int64_t& begin, int64_t& end) {
  int64_t q = n / nth, r = n % nth;
  begin = tid * q + std::min<int64_t>(tid, r);
  end = begin + q + (tid < r ? 1 : 0);
}

// What forward and backward share: the recurrent operand rows. Ho is the width
// of h (P with a projection, else H); `arow` are the rows the recurrent GEMM
// reads: h_{t-1}, or h_{t-1} * mask under recurrent dropout.
template <class T>
struct RecurrentRows {
  int64_t Ho = 0;
  const T* mask = nullptr;                 // [B, Ho] or null
  std::vector<const T*> xrows, hprev, arow;  // [rows]
  std::vector<T*> yrows;                   // [rows]
  const T* mask_of(int64_t b) const { return mask + b * Ho; }
};

template <class T>
struct FwdCtx : RecurrentRows<T> {
  const ForwardArgs<T>& a;
  const Schedule& sc;
  Workspace<T>* ws;  // null in inference
  int64_t H, I, Hp;
  int64_t ld_xp = 0;
  AlignedBuffer<T> xp;       // [rows, ld_xp >= G*Hp]: x W_ih^T + folded biases
  AlignedBuffer<T> bias;     // [G*Hp] folded into xp
  AlignedBuffer<T> b_hn;     // [Hp] GRU (reset after)
  AlignedBuffer<T> panels;   // recurrent weights in blocked panels
  AlignedBuffer<T> panels2;  // GRU reset-before: W_hn panels; LSTM projection: W_hr
  AlignedBuffer<T> state;    // [B, Hp] LSTM c; GRU reset-before z (inference)
  AlignedBuffer<T> rh;       // [B, Hp] GRU reset-before r*h (inference)
  AlignedBuffer<T> zeros;    // a zero row
  AlignedBuffer<T> hm, h0m;  // recurrent dropout: masked h rows (moved into ws when training)
  AlignedBuffer<T> m;        // LSTM projection: m rows (moved into ws when training)
  int64_t ld_hm = 0, ld_m = 0;
  std::vector<const T*> wih_cols;  // [G*Hp] W_ih row of a gate column; null: padding

  FwdCtx(const ForwardArgs<T>& args, const Schedule& s, Workspace<T>* w, int64_t hp)
      : a(args), sc(s), ws(w), H(args.H), I(args.I), Hp(hp) {}

  T* rh_row(int64_t s, int64_t i) { return ws ? ws->extra_row(sc.offset[s] + i) : rh.data() + i * Hp; }
  const T* xp_row(int64_t row) const { return xp.data() + row * ld_xp; }
  T* m_row(int64_t row) { return m.data() + row * ld_m; }

  // Writes h_t for units u..u+L of a packed row (and h_t * mask for the next step's GEMM).
  void emit_h(int64_t row, int64_t u, Vec<T> h) {
    store_h(this->yrows[row], u, this->Ho, h);
    if (this->mask)
      store_h(hm.data() + row * ld_hm, u, this->Ho, h * load_h(this->mask_of(sc.row_b[row]), u, this->Ho));
  }
};

template <class T>
struct BwdCtx : RecurrentRows<T> {
  const ForwardArgs<T>& a;
  const BackwardArgs<T>& g;
  const Workspace<T>& ws;
  const Schedule& sc;
  int64_t H, I, Hp;
  int64_t ld_dG = 0;
  AlignedBuffer<T> dG;       // [rows, ld_dG >= kGrad*Hp]
  AlignedBuffer<T> panels;   // W_hh for dh_{t-1} = dG_hh W_hh, in unit blocks
  AlignedBuffer<T> panels2;  // GRU reset-before: W_hn; LSTM projection: W_hr
  AlignedBuffer<T> carry;    // [B, Hp] LSTM dc; GRU the part of dh_{t-1} not through W_hh
  AlignedBuffer<T> dh;       // LSTM projection: dL/dh_t per packed row [rows, ld_dh]
  int64_t ld_dh = 0;
  AlignedBuffer<T> zeros;

  BwdCtx(const ForwardArgs<T>& fa, const BackwardArgs<T>& ba, const Workspace<T>& w)
      : a(fa), g(ba), ws(w), sc(w.sched), H(fa.H), I(fa.I), Hp(w.Hp) {}

  T* dG_row(int64_t row) { return dG.data() + row * ld_dG; }
  const T* c0row(int64_t i) const { return a.c0 ? a.c0 + sc.order[i] * H : zeros.data(); }
  // The recurrent part of dL/dh_{t-1} arrives through W_hh, so it is masked as h_{t-1} was.
  Vec<T> masked(Vec<T> v, int64_t b, int64_t u) const {
    return this->mask ? v * load_h(this->mask_of(b), u, this->Ho) : v;
  }
};

// Row pointers of every packed row: x_t, y_t, h_{t-1} (h0 or zeros at s=0)
// and the recurrent GEMM's rows (`hm`, `h0m`: masked rows, when masking).
template <class T>
void fill_row_pointers(RecurrentRows<T>& c, const Schedule& sc, int64_t I, const T* x, const T* h0, T* y,
                       const T* zeros, const T* hm, const T* h0m, int64_t ld_hm) {
  const int64_t Ho = c.Ho;
  c.xrows.resize(sc.rows);
  c.hprev.resize(sc.rows);
  c.yrows.resize(sc.rows);
  c.arow.resize(sc.rows);
  for (int64_t s = 0; s < sc.S; ++s)
    for (int64_t i = 0; i < sc.active[s]; ++i) {
      int64_t row = sc.offset[s] + i, b = sc.row_b[row], t = sc.row_t[row];
      c.xrows[row] = x + (t * sc.B + b) * I;
      c.yrows[row] = y + (t * sc.B + b) * Ho;
      c.hprev[row] = s == 0 ? (h0 ? h0 + b * Ho : zeros) : c.yrows[sc.offset[s - 1] + i];
      if (c.mask)
        c.arow[row] = s == 0 ? h0m + b * ld_hm : hm + (sc.offset[s - 1] + i) * ld_hm;
      else
        c.arow[row] = c.hprev[row];
    }
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
