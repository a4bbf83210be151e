// Schedule of a sequence call and the training workspace (ISA-independent).
#pragma once
#include <cstdint>
#include <vector>

#include "aligned_buffer.h"
#include "pyrnn/api.h"

namespace pyrnn {

// Batch entries are processed in order of decreasing length (stable), so the
// entries still running at step s are a prefix 0..active[s] of that order and
// each step's work shrinks with the batch. Step s of entry i lives in "packed
// row" offset[s] + i of every per-row buffer (PyTorch's PackedSequence order).
struct Schedule {
  int64_t T = 0, B = 0;
  int64_t S = 0;     // steps: the longest length
  int64_t rows = 0;  // valid (step, entry) pairs: the sum of lengths
  bool reverse = false;
  std::vector<int64_t> order;   // [B] entry i -> batch index b
  std::vector<int64_t> len;     // [B] length of entry i
  std::vector<int64_t> active;  // [S]
  std::vector<int64_t> offset;  // [S+1]
  std::vector<int64_t> row_b;   // [rows] batch index
  std::vector<int64_t> row_t;   // [rows] time index of x consumed at that row
};

// lengths: null or [B] values already validated to lie in [1,T] (schedule.cpp).
Schedule make_schedule(int64_t T, int64_t B, const int64_t* lengths, bool reverse);

// Where a training workspace's buffers lie in one caller block (a "residual":
// sequence_forward_residual): element offsets from the block's data start,
// each a multiple of 64 bytes, for `rows` packed rows. Computed per ISA level
// and cell (driver.h residual_layout), as forward lays them out.
struct ResidualLayout {
  int64_t Hp = 0, ld_gates = 0, ld_extra = 0, ld_hm = 0, ld_m = 0;
  int64_t gates = 0, extra = 0, hm = 0, h0m = 0, m = 0;  // offsets
  int64_t n_gates = 0, n_extra = 0, n_hm = 0, n_h0m = 0, n_m = 0;  // sizes
  int64_t elems = 0;  // the whole block
};

template <class T>
struct Workspace {
  Schedule sched;
  CellKind cell = CellKind::Lstm;
  Isa isa = Isa::Baseline;
  int64_t Hp = 0;  // H rounded up to whole vectors of the ISA that ran forward
  // Per packed row, gate-major, each group Hp wide:
  //   LSTM [i f g o], GRU [r z n (W_hn h + b_hn)], GRU reset-before [r z n], RNN: none.
  AlignedBuffer<T> gates;
  // LSTM: c_t; GRU reset-before: r * h_{t-1}. [rows, Hp]
  AlignedBuffer<T> extra;
  int64_t ld_gates = 0, ld_extra = 0;  // row strides (see good_ld)
  // With h_mask: h_t * mask per packed row [rows, ld_hm], and h0 * mask [B, ld_hm].
  AlignedBuffer<T> hm, h0m;
  int64_t ld_hm = 0;
  // LSTM projection: m_t = o * tanh(c_t) per packed row [rows, ld_m].
  AlignedBuffer<T> m;
  int64_t ld_m = 0;

  // Views `base` laid out as `L` (forward then fills it, or backward reads it).
  void borrow(T* base, const ResidualLayout& L) {
    Hp = L.Hp, ld_gates = L.ld_gates, ld_extra = L.ld_extra, ld_hm = L.ld_hm, ld_m = L.ld_m;
    auto view = [base](AlignedBuffer<T>& b, int64_t off, int64_t n) {
      if (n) b.borrow(base + off, size_t(n)), b.reserve(size_t(n));
    };
    view(gates, L.gates, L.n_gates), view(extra, L.extra, L.n_extra), view(hm, L.hm, L.n_hm);
    view(h0m, L.h0m, L.n_h0m), view(m, L.m, L.n_m);
  }

  T* gates_row(int64_t r) { return gates.data() + r * ld_gates; }
  const T* gates_row(int64_t r) const { return gates.data() + r * ld_gates; }
  T* extra_row(int64_t r) { return extra.data() + r * ld_extra; }
  const T* extra_row(int64_t r) const { return extra.data() + r * ld_extra; }
};

// Column panels lowered to a reduced precision (csrc/gemm/lowp.h): np panels
// of NR columns over K.
struct LowPanels {
  WeightPrecision prec = WeightPrecision::Same;
  int64_t K = 0, NR = 0, np = 0;
  AlignedBuffer<int8_t> q8;      // Int8: per panel [ceil(K/4)][NR][4] (k quads interleaved)
  AlignedBuffer<uint16_t> bf;    // BF16: per panel [K][NR]
  AlignedBuffer<float> scale;    // Int8: [np*NR], a scale per column
  AlignedBuffer<int32_t> offset; // Int8: [np*NR], 64 * the column's sum (the A rows' offset)
  size_t bytes() const { return q8.size() + 2 * bf.size() + 4 * scale.size() + 4 * offset.size(); }
};

// A cell's weights packed for the one-step path (pyrnn/api.h): the column
// panels of W_ih^T ([I][NR] per panel) and of W_hh^T, the latter split where
// a cell multiplies a later product (GRU reset-before's W_hn) rather than h.
template <class T>
struct PackedCell {
  CellKind cell = CellKind::Lstm;
  Isa isa = Isa::Baseline;
  int64_t I = 0, H = 0, N = 0;  // N = G*H
  int64_t NR = 0;               // panel width of `isa`
  int64_t n_h = 0;              // columns of W_hh^T multiplying h (the rest multiply the extra rows)
  AlignedBuffer<T> wx, wh, wn;  // panels of W_ih^T [I, N], W_hh^T [H, n_h] and [H, N - n_h]
  AlignedBuffer<T> b_ih, b_hh;  // [N]; zeros without bias
  // A reduced precision keeps wx, wh, wn lowered here instead (float only).
  WeightPrecision precision = WeightPrecision::Same;
  LowPanels lx, lh, ln;
};

// A layer direction's recurrent weights packed once (pyrnn/api.h): one buffer
// per step phase of the cell (csrc/cells/), each holding every block's panel.
template <class T>
struct PackedRecurrence {
  CellKind cell = CellKind::Lstm;
  Isa isa = Isa::Baseline;
  int64_t I = 0, H = 0, P = 0;
  std::vector<AlignedBuffer<T>> phases;
  // W_ih^T in column panels of NR over the input projection's G*Hp columns,
  // for calls with few rows (driver.h project_packed).
  AlignedBuffer<T> wih;
  int64_t NR = 0;
  // A reduced precision keeps phases and wih lowered here instead (float only);
  // every call's input projection then goes through low_wih.
  WeightPrecision precision = WeightPrecision::Same;
  std::vector<LowPanels> low_phases;
  LowPanels low_wih;
};

// One training graph's weights packed once for the backward of its calls
// (pyrnn/api.h pack_backward): a cell's steps in one graph each run a T = 1
// backward with the same W_ih and W_hh. `phases`: each backward phase's
// panels (BackwardPhase: W_hh, W_hr); `wih`: W_ih for dx, in the gate order of
// dG's input columns, as NR-wide column panels over all of K = G*Hp.
template <class T>
struct PackedBackward {
  CellKind cell = CellKind::Lstm;
  Isa isa = Isa::Baseline;
  int64_t I = 0, H = 0, P = 0, Hp = 0;
  std::vector<AlignedBuffer<T>> phases;
  AlignedBuffer<T> wih;
};

// Row stride for n elements: strides that are multiples of 1 KiB put the rows
// a micro-kernel reads together into the same L1 sets (4K aliasing), so such
// strides get one extra cache line (as oneDNN's get_good_ld does).
template <class T>
inline int64_t good_ld(int64_t n) {
  return (n * int64_t(sizeof(T))) % 1024 == 0 ? n + 64 / int64_t(sizeof(T)) : n;
}

// What a layer-normalised training forward keeps for backward (api.h
// LayerNormArgs; csrc/driver/layernorm.h). Per packed row, gate-major with
// each block Hp wide (row stride ld): the normalised projections xhat_ih and
// xhat_hh and the activated gates (LSTM i f g o, GRU r z n); per row and
// block 1/sigma (rstd_*, [rows, G]). LSTM also: the new cell state c [rows, Hp],
// its normalised value xhat_c and tanh(LN_1(c)) (tanh_c), rstd_c [rows]; with
// a projection the unprojected output m [rows, Hp].
template <class T>
struct LnWorkspace {
  Schedule sched;
  CellKind cell = CellKind::Lstm;
  Isa isa = Isa::Baseline;
  int64_t Hp = 0, ld = 0;
  AlignedBuffer<T> xhat_ih, xhat_hh, gates, rstd_ih, rstd_hh;
  AlignedBuffer<T> c, xhat_c, tanh_c, rstd_c;
  AlignedBuffer<T> m;  // with a projection: m = o * tanh(LN_1(c)) [rows, Hp], for dW_hr
  int64_t bytes() const {
    return int64_t(sizeof(T) * (xhat_ih.size() + xhat_hh.size() + gates.size() + rstd_ih.size() + rstd_hh.size() +
                                c.size() + xhat_c.size() + tanh_c.size() + rstd_c.size() + m.size()));
  }
};

template <class X>
void OpaqueDeleter<X>::operator()(X* p) const {
  delete p;
}

}  // namespace pyrnn
