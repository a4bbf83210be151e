// The kernels' entry points (csrc/driver/entry.cpp), called by the bindings:
// one layer, one direction, a whole sequence per call; or one cell step.
//
// Dimension names, used the same way everywhere:
//   T time steps, B batch, I input features, H hidden units, G gates per unit
//   (RNN 1, GRU 3, LSTM 4). Layout is PyTorch's:
//   x [T,B,I]; h0, c0, h_n, c_n [B,H]; y [T,B,H];
//   W_ih [G*H,I]; W_hh [G*H,H]; b_ih, b_hh [G*H]; gate order LSTM i,f,g,o, GRU r,z,n.
// All arrays are C-contiguous. Optional pointers may be null (zeros / no bias).
#pragma once
#include <cstdint>
#include <memory>

#include "pyrnn/cells.h"
#include "pyrnn/isa.h"

namespace pyrnn {

template <class T>
struct PackedRecurrence;
template <class T>
struct PackedBackward;

// Precision of weights packed for inference (pack_recurrence, pack_cell).
// Same: the call's dtype. Int8: per-row scaled int8 weights, activations
// quantised per row dynamically, int32 sums. BF16: bf16 weights, fp32
// activations and sums. The reduced ones are float32 only (csrc/gemm/lowp.h).
enum class WeightPrecision { Same, Int8, BF16 };

template <class Real>
struct ForwardArgs {
  CellKind cell = CellKind::Lstm;
  int64_t T = 0, B = 0, I = 0, H = 0;
  const Real* x = nullptr;
  const Real* h0 = nullptr;       // null: zeros
  const Real* c0 = nullptr;       // LSTM only; null: zeros
  const Real* W_ih = nullptr;
  const Real* W_hh = nullptr;
  const Real* b_ih = nullptr;     // null: no bias (then b_hh is null too)
  const Real* b_hh = nullptr;
  const int64_t* lengths = nullptr;  // [B] in [1,T]; null: all T
  bool reverse = false;        // consume x[L_b-1] ... x[0]; y stays aligned with x
  // LSTM projection (PyTorch proj_size): P > 0 makes h P wide, h_t = W_hr (o * tanh(c_t)),
  // W_hh [4H,P]; y, h0, h_n are [.., P]. 0: none.
  int64_t P = 0;
  const Real* W_hr = nullptr;  // [P,H]
  // Variational (recurrent) dropout: the recurrent GEMM uses h_{t-1} * h_mask[b]
  // (the same mask at every step of a sequence); [B, Hout]; null: none.
  const Real* h_mask = nullptr;
  // Zoneout: the step that consumes x[t] keeps zoneout_h[t, b] of h_{t-1}:
  // h_t = m h_{t-1} + (1 - m) h~_t ([T, B, Hout]); the LSTM's zoneout_c
  // ([T, B, H]) does the same to the state c_t, while h~_t = o tanh(c~_t)
  // reads the un-zoned c~_t = f c_{t-1} + i g (Krueger et al. 2016). Null: none.
  const Real* zoneout_h = nullptr;
  const Real* zoneout_c = nullptr;
  // rnn_leaky's integration rate a in (0, 1]: h_t = (1 - a) h_{t-1} + a tanh(...).
  Real leak = 1;
  // The recurrent weights packed once (pack_recurrence, from these W_hh and
  // W_hr), or null: packed in every call.
  const PackedRecurrence<Real>* packed = nullptr;
  Real* y = nullptr;              // [T,B,H]; must be zero-filled by the caller when lengths are given
  Real* h_n = nullptr;
  Real* c_n = nullptr;            // LSTM only
};

// What backward needs, filled by a training forward. Owned by the caller
// (Python holds it together with references to the forward's arrays, which
// backward reads again: x, h0, c0, the weights and y).
template <class T>
struct Workspace;

// Owning pointers to the types above whose layout only the kernels see
// (defined in runtime/workspace.h, instantiated in driver/entry.cpp).
template <class X>
struct OpaqueDeleter {
  void operator()(X* p) const;
};
template <class X>
using OpaquePtr = std::unique_ptr<X, OpaqueDeleter<X>>;

template <class T>
using WorkspacePtr = OpaquePtr<Workspace<T>>;

template <class Real>
struct BackwardArgs {
  const Real* dy = nullptr;     // [T,B,H]; null: zeros
  const Real* dh_n = nullptr;   // [B,H]; null: zeros
  const Real* dc_n = nullptr;   // LSTM; null: zeros
  Real* dx = nullptr;           // [T,B,I] (overwritten); null: not computed
  Real* dh0 = nullptr;          // [B,H] (overwritten)
  Real* dc0 = nullptr;          // LSTM [B,H] (overwritten)
  Real* dW_ih = nullptr;        // overwritten
  Real* dW_hh = nullptr;
  Real* db_ih = nullptr;        // overwritten when the forward had a bias
  Real* db_hh = nullptr;
  Real* dW_hr = nullptr;     // [P,H] when the forward projected (overwritten)
  // Optional [T,B,H]: ||dL/dh_t|| diagnostics; receives dL/dh_t for each step
  // (the total gradient reaching h_t, recurrent and from dy). Null: not stored.
  Real* dh_seq = nullptr;
  // The forward's W_ih, W_hh (W_hr) packed once for many backward calls
  // (pack_backward), or null: packed in every call. Packs of another ISA
  // level than the workspace's are not used.
  const PackedBackward<Real>* packed = nullptr;
};

// Entry points; every call picks the kernel for isa_selected() once.
// `training`: when true, returns a workspace for backward; otherwise null.
template <class T>
WorkspacePtr<T> sequence_forward(const ForwardArgs<T>& args, bool training, int nthreads);

template <class T>
void sequence_backward(const Workspace<T>& ws, const ForwardArgs<T>& fwd, const BackwardArgs<T>& args,
                       int nthreads);

// The weights of a training forward (fwd's cell, I, H, P, W_ih, W_hh, W_hr)
// packed for sequence_backward (BackwardArgs::packed), at the level that ran
// it (ws): for the T = 1 calls of a cell's steps in one graph, which then
// pack once instead of once per step. A copy.
template <class T>
using PackedBackwardPtr = OpaquePtr<PackedBackward<T>>;
template <class T>
PackedBackwardPtr<T> pack_backward(const Workspace<T>& ws, const ForwardArgs<T>& fwd);
template <class T>
int64_t packed_backward_bytes(const PackedBackward<T>& packed);

// Bytes a training workspace holds for these arguments (for reporting memory use).
template <class T>
int64_t workspace_bytes(const Workspace<T>& ws);

// The training workspace in caller memory (a "residual" buffer: a torch
// tensor, an XLA buffer), so a framework can keep it between its forward and
// backward ops and nothing is recomputed. residual_bytes: the block's size
// for these shapes (T*B rows whatever the lengths, the selected ISA level; the
// pointers in `args` are not read, only which of h_mask/W_hr are present).
// sequence_forward_residual runs a training forward with its workspace in
// `residual` (`nbytes`, 16-byte aligned or better), headed by what backward
// checks, at the selected level; where `nbytes` is less than that level's
// residual_bytes (a block sized at a lower level: a graph exported on another
// machine or under PYRNN_ISA), at the highest lower level whose layout fits
// (std::invalid_argument if none does). workspace_from_residual: that workspace again, for
// sequence_backward with the same `args` (inputs, weights, y), from the block
// of `nbytes`; throws std::invalid_argument when the block was not written by
// such a forward.
// The returned workspace views `residual`, which must outlive it.
template <class T>
int64_t residual_bytes(const ForwardArgs<T>& args);
// The block's parts for symbolic shapes: elements per packed row of each
// per-row buffer and elements per batch entry of the per-entry one, each part
// rounded up to 64 bytes (residual_bytes = header + their sum at T*B rows).
template <class T>
void residual_strides(const ForwardArgs<T>& args, int64_t& header_bytes, std::vector<int64_t>& per_row,
                      int64_t& per_entry);
template <class T>
WorkspacePtr<T> sequence_forward_residual(const ForwardArgs<T>& args, void* residual, int64_t nbytes, int nthreads);
template <class T>
WorkspacePtr<T> workspace_from_residual(const ForwardArgs<T>& args, void* residual, int64_t nbytes);

// One cell step for a batch (the cells' generation path): x [B,I], h, c [B,H]
// (null: zeros), weights as in ForwardArgs (no projection). Writes h_out (and
// c_out for the LSTM). Backward of a step goes through sequence_backward (T=1).
template <class Real>
struct CellStepArgs {
  CellKind cell = CellKind::Lstm;
  int64_t B = 0, I = 0, H = 0;
  const Real *x = nullptr, *h = nullptr, *c = nullptr;
  const Real *W_ih = nullptr, *W_hh = nullptr, *b_ih = nullptr, *b_hh = nullptr;
  Real *h_out = nullptr, *c_out = nullptr;
  Real leak = 1;  // rnn_leaky (see ForwardArgs::leak)
};

template <class T>
void cell_step(const CellStepArgs<T>& args, int nthreads);

// A cell's weights packed once for many steps (pyrnn's frozen cells):
// W_ih^T and W_hh^T in the GEMM's
// column panels, laid out for the ISA level selected when packing, which
// every step then uses. Owns copies: the arrays packed from may change
// afterwards without effect.
template <class T>
struct PackedCell;
template <class T>
using PackedCellPtr = OpaquePtr<PackedCell<T>>;

// Packs args.cell, I, H, W_ih, W_hh, b_ih, b_hh (the other fields are ignored).
template <class T>
PackedCellPtr<T> pack_cell(const CellStepArgs<T>& weights, WeightPrecision precision = WeightPrecision::Same);

// One step with packed weights: args.B, x, h, c, h_out, c_out are read (the
// weight fields are ignored); the results equal cell_step's up to rounding.
template <class T>
void packed_cell_step(const PackedCell<T>& packed, const CellStepArgs<T>& args, int nthreads);

// Bytes of packed weights (for reporting).
template <class T>
int64_t packed_cell_bytes(const PackedCell<T>& packed);

// A layer direction's recurrent weights (W_hh, and W_hr with a projection)
// packed once into the step GEMM's panels, for many sequence_forward calls
// (ForwardArgs::packed): frozen layers, functional.pack_weights. A copy,
// laid out for the ISA level selected when packing, which those calls then use.
template <class T>
using PackedRecurrencePtr = OpaquePtr<PackedRecurrence<T>>;

// Packs weights.cell, I, H, P, W_ih, W_hh, W_hr (the other fields are ignored).
// With a reduced precision, calls with these weights run every product with
// W_ih, W_hh and W_hr in that precision (the biases and the element-wise
// math stay fp32).
template <class T>
PackedRecurrencePtr<T> pack_recurrence(const ForwardArgs<T>& weights,
                                       WeightPrecision precision = WeightPrecision::Same);

template <class T>
int64_t packed_recurrence_bytes(const PackedRecurrence<T>& packed);

// Register-only FMA loop for the roofline: returns fp32 GFLOP/s measured on
// `nthreads` threads with the selected ISA.
double measure_fma_peak_gflops(int nthreads, double seconds);

// Read bandwidth (GB/s, all threads) of a working set of `bytes` per thread,
// with the selected ISA's vector loads.
double measure_read_bandwidth_gbs(int64_t bytes, int nthreads, double seconds);

// ---------------------------------------------------------------------------
// Layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016; csrc/driver/layernorm.h).
//
// LN_G(v; gamma, beta) normalises each of the G gate blocks of H units of a
// row v [G*H] on its own: (v_blk - mean) / sqrt(var + 1e-5) * gamma_blk +
// beta_blk (biased variance, as torch.nn.LayerNorm).
//   LSTM: a = LN_4(W_ih x; ln_ih, b_ih) + LN_4(W_hh h; ln_hh, b_hh);
//         i,f,o = sigmoid, g = tanh of a's blocks; c' = f c + i g;
//         h' = o * tanh(LN_1(c'; ln_c_weight, ln_c_bias))
//   GRU (reset-after): gi = LN_3(W_ih x; ln_ih, b_ih), gh = LN_3(W_hh h; ln_hh, b_hh);
//         r = s(gi_r + gh_r), z = s(gi_z + gh_z), n = tanh(gi_n + r gh_n);
//         h' = (1 - z) n + z h
// b_ih/b_hh (the betas) are both given or both null; ln_c_bias may be null.
// Lengths and reverse as ForwardArgs; h_mask (recurrent dropout: W_hh h
// reads h_{t-1} * h_mask[b]; the GRU's z h_{t-1} keeps the unmasked state),
// zoneout_h and (LSTM) zoneout_c as ForwardArgs too: the state c' above is then
// m_c c + (1 - m_c) c' while h' reads LN_1 of the un-zoned c', and
// h' = m_h h + (1 - m_h) h'.
// LSTM projection (PyTorch proj_size): P > 0 makes h P wide, h' = W_hr m with
// m = o * tanh(LN_1(c')) [H] and W_hr [P, H] (0 < P < H); W_hh is then
// [4H, P]; h0, h_n, y, h_mask, zoneout_h, dy, dh_n, dh0 are P wide (c0, c_n,
// zoneout_c stay H wide); zoneout_h mixes the projected h. No packing.
template <class Real>
struct LayerNormArgs {
  CellKind cell = CellKind::Lstm;  // Lstm or Gru
  int64_t T = 0, B = 0, I = 0, H = 0;
  const Real *x = nullptr, *h0 = nullptr, *c0 = nullptr;
  const Real *W_ih = nullptr, *W_hh = nullptr, *b_ih = nullptr, *b_hh = nullptr;
  const Real *ln_ih = nullptr, *ln_hh = nullptr;              // [G*H] gains
  const Real *ln_c_weight = nullptr, *ln_c_bias = nullptr;    // LSTM [H]
  const int64_t* lengths = nullptr;
  bool reverse = false;
  const Real* h_mask = nullptr;                              // [B, H] or null
  const Real *zoneout_h = nullptr, *zoneout_c = nullptr;    // [T, B, H] or null (zoneout_c: LSTM)
  int64_t P = 0;                                             // LSTM projection width; 0: none
  const Real* W_hr = nullptr;                                // [P, H] when P > 0
  Real* y = nullptr;  // [T,B,H]; zero-filled by the caller when lengths are given
  Real *h_n = nullptr, *c_n = nullptr;
};

template <class Real>
struct LayerNormGrads {
  const Real *dy = nullptr, *dh_n = nullptr, *dc_n = nullptr;  // null: zeros
  // Outputs, overwritten; dx must be zero-filled by the caller when lengths are
  // given (padded positions are not written). db_*, dln_c_bias: null without those biases.
  Real *dx = nullptr, *dh0 = nullptr, *dc0 = nullptr, *dW_ih = nullptr, *dW_hh = nullptr;
  Real *db_ih = nullptr, *db_hh = nullptr, *dln_ih = nullptr, *dln_hh = nullptr;
  Real *dln_c_weight = nullptr, *dln_c_bias = nullptr;
  Real* dW_hr = nullptr;  // [P, H] when the forward projected (overwritten)
};

template <class T>
struct LnWorkspace;
template <class T>
using LnWorkspacePtr = OpaquePtr<LnWorkspace<T>>;

template <class T>
LnWorkspacePtr<T> layernorm_forward(const LayerNormArgs<T>& args, bool training, int nthreads);
template <class T>
void layernorm_backward(const LnWorkspace<T>& ws, const LayerNormArgs<T>& fwd, const LayerNormGrads<T>& grads,
                        int nthreads);
template <class T>
int64_t layernorm_workspace_bytes(const LnWorkspace<T>& ws);

}  // namespace pyrnn
