// What a cell's element-wise code sees of one forward or backward call (for
// one ISA level), and the vocabulary of cell traits the driver reads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../gemm/gemm.h"
#include "../runtime/workspace.h"

namespace pyrnn {

// Cell traits, read by the driver (csrc/driver/driver.h). A cell is a struct with
//   kKind            its line in the cell table (pyrnn/cells.h); G gates per unit
//   kSaved, kExtra   gate groups saved per packed row by a training forward
//                    (Workspace::gates), and whether it saves an Hp-wide extra row
//                    (Workspace::extra); kGrad: dG groups per row in backward
//   kCellState       has a cell state c (c0, c_n, dc0, dc_n)
//   kDirectCarry     h_{t-1} reaches h_t other than through W_hh (dL/dh_{t-1} gets
//                    a direct part, kept in BwdCtx::carry)
//   kSeparateBhn     b_hh's last gate group stays out of the input projection
//                    (GRU: r multiplies it)
//   kIhOff, kIhOrder[G]  dG columns (in groups of Hp) and gate order of dW_ih, db_ih
//   kHhOff, kHhOrder[G]  the same for db_hh
//   kHhParts[]       dW_hh as GEMMs over dG columns times the rows in `rows`
//   Forward, Backward   the phases of one step (below), as std::tuple types
// and for the one-step path (csrc/driver/step.h) kStepHhGates and step().

// The weights a phase's GEMM multiplies: W_hh ([G*H, Ho]) or the LSTM
// projection W_hr ([P, H]).
enum class PhaseWeights { Recurrent, Projection };

// A dW_hh GEMM: dG groups [col0, col0 + ng) (gates `order`) times the
// recurrent GEMM's A rows (h_{t-1}, masked) or the cell's extra rows.
enum class HhRows { Recurrent, Extra };
struct HhPart {
  int col0, ng;
  const int* order;
  HhRows rows;
};

// A step phase is a struct (deriving from PhaseDefaults) with
//   kWeights, kGates[]            which weight rows its panel holds
//   kBlockVecs                    (forward) vectors of units per block and gate
//   tile(f, s, i0, m, u, tile)    (forward) the element-wise update of a tile
//   unit(b, s, i, row, u, v)      (backward) the update of one vector
//   a_row(ctx, s, i)              (phases after the first) the GEMM's A rows;
//                                 the first phase reads h_{t-1} (forward) or
//                                 dG_{t+1} from column group kCol0 (backward).
struct PhaseDefaults {
  static constexpr PhaseWeights kWeights = PhaseWeights::Recurrent;
  static constexpr int kBlockVecs = 1;
  static constexpr int kCol0 = 0;
};
namespace PYRNN_ISA_NS {

// The cell struct of a kind (and, for the LSTM, `projected`), specialised in
// each cell's file.
template <CellKind K>
struct CellOf;

// Calls epi(i, row, u, v) for every vector v of a tile (units u0.. below
// `limit`) of rows i0..i0+m; row = off + i.
template <class T, int NV, class F>
inline void for_tile_vectors(const T* tile, int64_t off, int64_t i0, int m, int64_t u0, int64_t limit, F epi) {
  constexpr int L = kLanes<T>;
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < NV && u0 + c * L < limit; ++c)
      epi(i0 + r, off + i0 + r, u0 + c * L, loadu(tile + (r * NV + c) * L));
}

// The row of a [T, B, width] array (zoneout masks) for a packed row of the schedule.
template <class T>
inline const T* time_major_row(const T* a, const Schedule& sc, int64_t row, int64_t width) {
  return a + (sc.row_t[row] * sc.B + sc.row_b[row]) * width;
}

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
  AlignedBuffer<T> state;    // [B, Hp] LSTM c; GRU reset-before z (inference)
  AlignedBuffer<T> extra;    // [B, Hp] inference stand-in for the workspace's extra rows (one step's)
  AlignedBuffer<T> zeros;    // a zero row
  AlignedBuffer<T> hm, h0m;  // recurrent dropout: masked h rows (moved into ws when training)
  AlignedBuffer<T> m;        // LSTM projection: m rows (moved into ws when training)
  int64_t ld_hm = 0, ld_m = 0;
  std::vector<const T*> wih_cols;  // [G*Hp] W_ih row of a gate column; null: padding

  FwdCtx(const ForwardArgs<T>& args, const Schedule& s, Workspace<T>* w, int64_t hp)
      : a(args), sc(s), ws(w), H(args.H), I(args.I), Hp(hp) {}

  // The cell's extra row (Cell::kExtra) of entry i at step s.
  T* extra_row(int64_t s, int64_t i) { return ws ? ws->extra_row(sc.offset[s] + i) : extra.data() + i * Hp; }
  const T* xp_row(int64_t row) const { return xp.data() + row * ld_xp; }
  T* m_row(int64_t row) { return m.data() + row * ld_m; }

  // Writes h_t for units u..u+L of a packed row (and h_t * mask for the next step's GEMM),
  // after zoneout: h_t = m h_{t-1} + (1 - m) h~ (exactly h_{t-1} or h~ where m is 1 or 0).
  void emit_h(int64_t row, int64_t u, Vec<T> h) {
    if (a.zoneout_h) {
      const Vec<T> m = load_h(time_major_row(a.zoneout_h, sc, row, this->Ho), u, this->Ho);
      h = m * load_h(this->hprev[row], u, this->Ho) + (T(1) - m) * h;
    }
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
  AlignedBuffer<T> carry;    // [B, Hp] LSTM dc; GRU the part of dh_{t-1} not through W_hh
  AlignedBuffer<T> zcarry;   // [B, ld_z] zoneout: m_t dL/dh_t, the part of dh_{t-1} that skips the cell
  int64_t ld_z = 0;
  AlignedBuffer<T> dh;       // LSTM projection: dL/dh_t per packed row [rows, ld_dh]
  int64_t ld_dh = 0;
  std::vector<const T*> m_rows;      // LSTM projection: m_t per packed row (dW_hr's B)
  std::vector<const T*> extra_rows;  // the workspace's extra rows (Cell::kExtra)
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

// Rows of dG (from column col0) for step s+1, or zeros for entries that end at s:
// the A rows of a backward step's first GEMM.
template <class T>
inline auto next_step_rows(BwdCtx<T>& b, int64_t s, int64_t col0) {
  const Schedule& sc = b.sc;
  const int64_t nn = s + 1 < sc.S ? sc.active[s + 1] : 0, offn = s + 1 < sc.S ? sc.offset[s + 1] : 0;
  return [&b, nn, offn, col0](int64_t i) { return i < nn ? (const T*)b.dG_row(offn + i) + col0 : b.zeros.data(); };
}

// One vector of units u.. (n valid lanes) of batch row b in the one-step path
// (csrc/driver/step.h): gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh, [B, G*H];
// h, c, h_out, c_out, extra [B, H].
template <class T>
struct StepUnit {
  const T *gi, *gh, *h, *c;
  T *h_out, *c_out, *extra;
  int64_t b, u, N, H;
  int n;
  T leak = T(1);  // rnn_leaky
  Vec<T> load(const T* p, int64_t ld, int64_t off) const {
    return n == kLanes<T> ? loadu(p + b * ld + off + u) : load_first(p + b * ld + off + u, n);
  }
  void store(T* p, Vec<T> v) const {
    if (n == kLanes<T>)
      storeu(p + b * H + u, v);
    else
      store_first(p + b * H + u, v, n);
  }
  Vec<T> xg(int g) const { return load(gi, N, g * H); }  // input part of gate g
  Vec<T> hg(int g) const { return load(gh, N, g * H); }  // recurrent part of gate g
  Vec<T> h_prev() const { return load(h, H, 0); }
  Vec<T> c_prev() const { return load(c, H, 0); }
  void set_h(Vec<T> v) const { store(h_out, v); }
  void set_c(Vec<T> v) const { store(c_out, v); }
  void set_extra(Vec<T> v) const { store(extra, v); }
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
