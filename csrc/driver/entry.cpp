// The kernels' entry points (pyrnn/api.h): each call picks the ISA level's
// kernel table and its thread count (adaptive, runtime/threads.cpp).
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "../runtime/workspace.h"
#include "kernel_table.h"
#include "pyrnn/cache.h"
#include "pyrnn/threads.h"

namespace pyrnn {

const KernelTable& kernels_for(Isa isa) {
#if defined(PYRNN_HAVE_X86)
#if !defined(PYRNN_NO_AVX512)
  if (isa == Isa::Avx512) return kernels_avx512();
#endif
  if (isa == Isa::Avx2) return kernels_avx2();
#endif
  (void)isa;
  return kernels_baseline();
}

// The kernels of dtype T at an ISA level.
template <class T>
const KernelOps<T>& ops_for(Isa isa) {
  return kernels_for(isa).ops<T>();
}

// What the adaptive thread choice keys a sequence call on: the entry point,
// cell, dtype, ISA and shape, but not T or the lengths (time is compared per
// row), so loops whose sequence length changes every batch share one key.
template <class T>
uint64_t sequence_key(int entry, const ForwardArgs<T>& a, Isa isa) {
  return call_key({entry, int64_t(a.cell), int64_t(sizeof(T)), int64_t(isa), a.B, a.I, a.H, a.P,
                   int64_t(a.h_mask != nullptr), int64_t(a.b_ih != nullptr)});
}

template <class T>
double recurrent_flops_per_step(const ForwardArgs<T>& a) {
  return 2.0 * double(a.B) * double(gates_of(a.cell)) * double(a.H) * double(a.P ? a.P : a.H);
}

template <class T>
WorkspacePtr<T> sequence_forward(const ForwardArgs<T>& args, bool training, int nthreads) {
  WorkspacePtr<T> w(new Workspace<T>());
  w->sched = make_schedule(args.T, args.B, args.lengths, args.reverse);
  w->cell = args.cell;
  // Prepacked weights are laid out for the level that packed them.
  w->isa = args.packed ? args.packed->isa : isa_selected();
  {
    ThreadChoice choice(sequence_key(training ? 1 : 2, args, w->isa), nthreads, recurrent_flops_per_step(args),
                        double(w->sched.rows));
    ops_for<T>(w->isa).forward(args, *w, training, choice.threads());
  }
  if (!training) w.reset();
  return w;
}

template <class T>
void sequence_backward(const Workspace<T>& ws, const ForwardArgs<T>& fwd, const BackwardArgs<T>& args, int nthreads) {
  ThreadChoice choice(sequence_key(3, fwd, ws.isa), nthreads, 2 * recurrent_flops_per_step(fwd), double(ws.sched.rows));
  // Backward runs on the level that ran forward: the saved layout depends on it.
  if (args.packed && (args.packed->isa != ws.isa || args.packed->cell != fwd.cell || args.packed->I != fwd.I ||
                      args.packed->H != fwd.H || args.packed->P != fwd.P || args.packed->Hp != ws.Hp)) {
    BackwardArgs<T> own = args;  // packed for another level or shape: this call packs its own
    own.packed = nullptr;
    ops_for<T>(ws.isa).backward(ws, fwd, own, choice.threads());
    return;
  }
  ops_for<T>(ws.isa).backward(ws, fwd, args, choice.threads());
}

template <class T>
PackedBackwardPtr<T> pack_backward(const Workspace<T>& ws, const ForwardArgs<T>& fwd) {
  PackedBackwardPtr<T> p(new PackedBackward<T>());
  p->isa = ws.isa;
  ops_for<T>(ws.isa).pack_backward(ws, fwd, *p);
  return p;
}

template <class T>
int64_t packed_backward_bytes(const PackedBackward<T>& p) {
  size_t n = p.wih.size();
  for (const auto& b : p.phases) n += b.size();
  return int64_t(n * sizeof(T));
}

// A residual block: this header (128 bytes), then the workspace laid out by the
// ISA level that ran forward (KernelOps::residual_layout).
// `lengths`: 0 without lengths, else a hash of them (odd), so that a backward
// given other lengths than its forward's is refused rather than reading rows
// the forward never wrote.
struct ResidualHeader {
  int64_t magic, version, isa, cell, dtype_bytes, T, B, I, H, P, has_mask, lengths, reverse, elems;
  // bit 0: zoneout_h, bit 1: zoneout_c, bit 2: h0, bit 3: c0, bit 4: biases (given or null: a
  // workspace rebuilt without the h0 the forward had ran backward from zeros, silently)
  int64_t inputs;
  double leak;
};
static_assert(sizeof(ResidualHeader) == 128, "the workspace starts 128 bytes in");
constexpr int64_t kResidualMagic = 0x315357'4e4e5259;  // "YRNNWS1"

// FNV-1a over the B lengths, made odd (never 0).
inline int64_t lengths_hash(const int64_t* lengths, int64_t B) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int64_t i = 0; i < B; ++i)
    for (int k = 0; k < 8; ++k) h = (h ^ ((uint64_t(lengths[i]) >> (8 * k)) & 0xff)) * 0x100000001b3ull;
  return int64_t(h | 1);
}

template <class T>
ResidualHeader residual_header(const ForwardArgs<T>& a, Isa isa) {
  const ResidualLayout L = ops_for<T>(isa).residual_layout(a, a.T * a.B);
  return {kResidualMagic, 2, int64_t(isa), int64_t(a.cell), int64_t(sizeof(T)), a.T, a.B, a.I, a.H, a.P,
          a.h_mask != nullptr, a.lengths ? lengths_hash(a.lengths, a.B) : 0, a.reverse, L.elems,
          int64_t(a.zoneout_h != nullptr) | int64_t(a.zoneout_c != nullptr) << 1 | int64_t(a.h0 != nullptr) << 2 |
              int64_t(a.c0 != nullptr) << 3 | int64_t(a.b_ih != nullptr) << 4,
          double(a.leak)};
}

// The block's bytes for a forward at `isa`.
template <class T>
int64_t residual_bytes_at(const ForwardArgs<T>& a, Isa isa) {
  return int64_t(sizeof(ResidualHeader)) + residual_header(a, isa).elems * int64_t(sizeof(T));
}

template <class T>
int64_t residual_bytes(const ForwardArgs<T>& a) {
  return residual_bytes_at(a, isa_selected());
}

template <class T>
void residual_strides(const ForwardArgs<T>& args, int64_t& header_bytes, std::vector<int64_t>& per_row,
                      int64_t& per_entry) {
  ForwardArgs<T> one = args;
  one.B = 1;
  const ResidualLayout L = ops_for<T>(isa_selected()).residual_layout(one, 1);
  header_bytes = int64_t(sizeof(ResidualHeader));
  per_row = {L.n_gates, L.n_extra, L.n_hm, L.n_m};
  per_entry = L.n_h0m;
}

// w's schedule and buffers over `residual` (laid out for w->isa).
template <class T>
void borrow_residual(const ForwardArgs<T>& a, Workspace<T>& w, void* residual) {
  w.sched = make_schedule(a.T, a.B, a.lengths, a.reverse);
  w.cell = a.cell;
  T* base = reinterpret_cast<T*>(static_cast<char*>(residual) + sizeof(ResidualHeader));
  w.borrow(base, ops_for<T>(w.isa).residual_layout(a, a.T * a.B));
}

template <class T>
WorkspacePtr<T> sequence_forward_residual(const ForwardArgs<T>& args, void* residual, int64_t nbytes, int nthreads) {
  WorkspacePtr<T> w(new Workspace<T>());
  // The block's size was fixed where the graph was traced, perhaps at a lower level (lanes pad H
  // differently): a jax.export'ed gradient traced at avx2 was refused on an AVX-512 machine.
  // (Backward reads the level from the header.)
  w->isa = isa_selected();
  const int64_t need = residual_bytes_at(args, w->isa);
  for (int64_t bytes = need; bytes > nbytes; bytes = residual_bytes_at(args, w->isa)) {
    if (w->isa == Isa::Baseline)
      throw std::invalid_argument("residual: too small for this call: it needs at least " + std::to_string(need) +
                                  " bytes (functional.residual_nbytes), got " + std::to_string(nbytes));
    w->isa = Isa(int(w->isa) - 1);
  }
  const ResidualHeader h = residual_header(args, w->isa);
  std::memcpy(residual, &h, sizeof h);
  borrow_residual(args, *w, residual);
  ThreadChoice choice(sequence_key(1, args, w->isa), nthreads, recurrent_flops_per_step(args), double(w->sched.rows));
  ops_for<T>(w->isa).forward(args, *w, true, choice.threads());
  return w;
}

template <class T>
WorkspacePtr<T> workspace_from_residual(const ForwardArgs<T>& args, void* residual, int64_t nbytes) {
  ResidualHeader h;
  if (nbytes < int64_t(sizeof h)) throw std::invalid_argument("residual: smaller than its header");
  std::memcpy(&h, residual, sizeof h);
  if (h.magic != kResidualMagic || h.version != 2)
    throw std::invalid_argument("residual: not a workspace written by a pyrnn training forward");
  const std::vector<Isa> levels = isa_supported();
  if (std::find(levels.begin(), levels.end(), Isa(h.isa)) == levels.end())
    throw std::invalid_argument("residual: written at an ISA level this CPU does not support");
  const ResidualHeader want = residual_header(args, Isa(h.isa));
  if (std::memcmp(&h, &want, sizeof h) != 0)
    throw std::invalid_argument("residual: written by a forward with another cell, dtype, shape, lengths or "
                                "options than these arguments (h0, c0 and the biases given or None count too)");
  if (nbytes < int64_t(sizeof h) + h.elems * int64_t(sizeof(T)))
    throw std::invalid_argument("residual: shorter than the workspace its header describes");
  WorkspacePtr<T> w(new Workspace<T>());
  w->isa = Isa(h.isa);
  borrow_residual(args, *w, residual);
  return w;
}

template <class T>
int64_t workspace_bytes(const Workspace<T>& ws) {
  return int64_t((ws.gates.size() + ws.extra.size() + ws.hm.size() + ws.h0m.size() + ws.m.size()) * sizeof(T));
}

// One step splits only once its weights no longer fit one core's caches. run(threads) runs the step
// while the choice is alive, so that the adaptive mode times the step (a choice destroyed before the
// step, as it once was, timed nothing: both arms recorded ~0 and the choice was noise).
template <class T, class Run>
void with_step_threads(const CellStepArgs<T>& args, Isa isa, int entry, int nthreads, Run run) {
  const double flops = 2.0 * double(args.B) * gates_of(args.cell) * double(args.H) * double(args.I + args.H);
  const int limit = flops < double(1 << 18) ? 1 : nthreads;
  if (limit == 1) return run(1);
  ThreadChoice choice(call_key({entry, int64_t(args.cell), int64_t(sizeof(T)), int64_t(isa), args.B, args.I, args.H}),
                      limit, flops, 1.0);
  run(choice.threads());
}

// Whether an unpacked cell step should pack its weights and run the packed step (the GEMM
// micro-kernel): cell_step's dot products load each weight vector for at most two rows (four with 32
// registers) and end every output with a horizontal sum (pyrnn.torch.LSTMCell B=64 I=65 H=128 in
// no_grad: 0.95 ms a step against torch.nn's 0.31; Zen 3, 1 thread), but packing reads and writes
// every weight once per call (I=H=1024: ~5 ms, about ten rows of the step). So: from 16 rows where
// the weights fit in L2, from 32 otherwise (measured, 1 thread: I=H=256 B=16 0.37 ms packed against
// 0.50; I=H=1024 B=16 10.9 against 9.1, B=32 14.5 against 17.7; I=H=2048 B=32 53 against 71).
template <class T>
bool pack_for_step(const CellStepArgs<T>& a) {
  const int64_t bytes = int64_t(gates_of(a.cell)) * a.H * (a.I + a.H) * int64_t(sizeof(T));
  return a.B >= 32 || (a.B >= 16 && bytes <= cache_sizes().l2);
}

template <class T>
void cell_step(const CellStepArgs<T>& args, int nthreads) {
  const Isa isa = isa_selected();
  if (pack_for_step(args)) {
    PackedCell<T> p;
    p.isa = isa;
    ops_for<T>(isa).pack_cell(args, WeightPrecision::Same, p);
    with_step_threads(args, isa, 5, nthreads, [&](int nt) { ops_for<T>(isa).packed_step(p, args, nt); });
    return;
  }
  with_step_threads(args, isa, 4, nthreads, [&](int nt) { ops_for<T>(isa).cell_step(args, nt); });
}
template void cell_step(const CellStepArgs<float>&, int);
template void cell_step(const CellStepArgs<double>&, int);

template <class T>
PackedCellPtr<T> pack_cell(const CellStepArgs<T>& weights, WeightPrecision precision) {
  PackedCellPtr<T> p(new PackedCell<T>());
  p->isa = isa_selected();
  ops_for<T>(p->isa).pack_cell(weights, precision, *p);
  return p;
}

template <class T>
void packed_cell_step(const PackedCell<T>& p, const CellStepArgs<T>& args, int nthreads) {
  // The level that packed the weights runs the step: the layout depends on it.
  CellStepArgs<T> a = args;
  a.cell = p.cell, a.I = p.I, a.H = p.H;
  with_step_threads(a, p.isa, 5, nthreads, [&](int nt) { ops_for<T>(p.isa).packed_step(p, a, nt); });
}

template <class T>
int64_t packed_cell_bytes(const PackedCell<T>& p) {
  return int64_t((p.wx.size() + p.wh.size() + p.wn.size() + p.b_ih.size() + p.b_hh.size()) * sizeof(T) +
                 p.lx.bytes() + p.lh.bytes() + p.ln.bytes());
}

template <class T>
PackedRecurrencePtr<T> pack_recurrence(const ForwardArgs<T>& weights, WeightPrecision precision) {
  PackedRecurrencePtr<T> p(new PackedRecurrence<T>());
  p->isa = isa_selected();
  ops_for<T>(p->isa).pack_recurrence(weights, precision, *p);
  return p;
}

template <class T>
int64_t packed_recurrence_bytes(const PackedRecurrence<T>& p) {
  size_t n = 0;
  for (const auto& b : p.phases) n += b.size();
  n += p.wih.size();
  size_t low = p.low_wih.bytes();
  for (const auto& l : p.low_phases) low += l.bytes();
  return int64_t(n * sizeof(T) + low);
}

template PackedBackwardPtr<float> pack_backward(const Workspace<float>&, const ForwardArgs<float>&);
template PackedBackwardPtr<double> pack_backward(const Workspace<double>&, const ForwardArgs<double>&);
template int64_t packed_backward_bytes(const PackedBackward<float>&);
template int64_t packed_backward_bytes(const PackedBackward<double>&);
template PackedRecurrencePtr<float> pack_recurrence(const ForwardArgs<float>&, WeightPrecision);
template PackedRecurrencePtr<double> pack_recurrence(const ForwardArgs<double>&, WeightPrecision);
template int64_t packed_recurrence_bytes(const PackedRecurrence<float>&);
template int64_t packed_recurrence_bytes(const PackedRecurrence<double>&);

template PackedCellPtr<float> pack_cell(const CellStepArgs<float>&, WeightPrecision);
template PackedCellPtr<double> pack_cell(const CellStepArgs<double>&, WeightPrecision);
template void packed_cell_step(const PackedCell<float>&, const CellStepArgs<float>&, int);
template void packed_cell_step(const PackedCell<double>&, const CellStepArgs<double>&, int);
template int64_t packed_cell_bytes(const PackedCell<float>&);
template int64_t packed_cell_bytes(const PackedCell<double>&);

double measure_fma_peak_gflops(int nthreads, double seconds) {
  return kernels_for(isa_selected()).fma_peak(std::max(1, nthreads), seconds);
}

double measure_read_bandwidth_gbs(int64_t bytes, int nthreads, double seconds) {
  return kernels_for(isa_selected()).read_bandwidth(bytes, std::max(1, nthreads), seconds);
}

template WorkspacePtr<float> sequence_forward(const ForwardArgs<float>&, bool, int);
template WorkspacePtr<double> sequence_forward(const ForwardArgs<double>&, bool, int);
template void sequence_backward(const Workspace<float>&, const ForwardArgs<float>&, const BackwardArgs<float>&, int);
template void sequence_backward(const Workspace<double>&, const ForwardArgs<double>&, const BackwardArgs<double>&,
                                int);
template int64_t workspace_bytes(const Workspace<float>&);
template int64_t residual_bytes(const ForwardArgs<float>&);
template void residual_strides(const ForwardArgs<float>&, int64_t&, std::vector<int64_t>&, int64_t&);
template void residual_strides(const ForwardArgs<double>&, int64_t&, std::vector<int64_t>&, int64_t&);
template int64_t residual_bytes(const ForwardArgs<double>&);
template WorkspacePtr<float> sequence_forward_residual(const ForwardArgs<float>&, void*, int64_t, int);
template WorkspacePtr<double> sequence_forward_residual(const ForwardArgs<double>&, void*, int64_t, int);
template WorkspacePtr<float> workspace_from_residual(const ForwardArgs<float>&, void*, int64_t);
template WorkspacePtr<double> workspace_from_residual(const ForwardArgs<double>&, void*, int64_t);
template int64_t workspace_bytes(const Workspace<double>&);
template struct OpaqueDeleter<Workspace<float>>;
template struct OpaqueDeleter<Workspace<double>>;
template struct OpaqueDeleter<PackedCell<float>>;
template struct OpaqueDeleter<PackedCell<double>>;
template struct OpaqueDeleter<PackedRecurrence<float>>;
template struct OpaqueDeleter<PackedRecurrence<double>>;
template struct OpaqueDeleter<PackedBackward<float>>;
template struct OpaqueDeleter<PackedBackward<double>>;

// ---- layer-normalised LSTM / GRU (layernorm.h) ----

template <class T>
LnWorkspacePtr<T> layernorm_forward(const LayerNormArgs<T>& args, bool training, int nthreads) {
  if (args.cell != CellKind::Lstm && args.cell != CellKind::Gru)
    throw std::invalid_argument("layernorm_forward: the cell must be the LSTM or the GRU (reset-after)");
  if (args.P != 0 && (args.cell != CellKind::Lstm || !args.W_hr || args.P < 0 || args.P >= args.H))
    throw std::invalid_argument("layernorm_forward: a projection needs the LSTM, W_hr and 0 < P < H");
  LnWorkspacePtr<T> w(new LnWorkspace<T>());
  w->sched = make_schedule(args.T, args.B, args.lengths, args.reverse);
  w->cell = args.cell;
  w->isa = isa_selected();
  ForwardArgs<T> key;  // the thread choice keys on the shape, as sequence_forward's does
  key.cell = args.cell, key.B = args.B, key.I = args.I, key.H = args.H, key.P = args.P, key.b_ih = args.b_ih;
  {
    ThreadChoice choice(sequence_key(training ? 11 : 12, key, w->isa), nthreads, recurrent_flops_per_step(key),
                        double(w->sched.rows));
    ops_for<T>(w->isa).ln_forward(args, *w, training, choice.threads());
  }
  if (!training) w.reset();
  return w;
}

template <class T>
void layernorm_backward(const LnWorkspace<T>& ws, const LayerNormArgs<T>& fwd, const LayerNormGrads<T>& grads,
                        int nthreads) {
  ForwardArgs<T> key;
  key.cell = fwd.cell, key.B = fwd.B, key.I = fwd.I, key.H = fwd.H, key.P = fwd.P, key.b_ih = fwd.b_ih;
  ThreadChoice choice(sequence_key(13, key, ws.isa), nthreads, 2 * recurrent_flops_per_step(key),
                      double(ws.sched.rows));
  // The level that ran forward: the saved rows are laid out for its vector width.
  ops_for<T>(ws.isa).ln_backward(ws, fwd, grads, choice.threads());
}

template <class T>
int64_t layernorm_workspace_bytes(const LnWorkspace<T>& ws) {
  return ws.bytes();
}

template LnWorkspacePtr<float> layernorm_forward(const LayerNormArgs<float>&, bool, int);
template LnWorkspacePtr<double> layernorm_forward(const LayerNormArgs<double>&, bool, int);
template void layernorm_backward(const LnWorkspace<float>&, const LayerNormArgs<float>&, const LayerNormGrads<float>&,
                                 int);
template void layernorm_backward(const LnWorkspace<double>&, const LayerNormArgs<double>&,
                                 const LayerNormGrads<double>&, int);
template int64_t layernorm_workspace_bytes(const LnWorkspace<float>&);
template int64_t layernorm_workspace_bytes(const LnWorkspace<double>&);
template struct OpaqueDeleter<LnWorkspace<float>>;
template struct OpaqueDeleter<LnWorkspace<double>>;

}  // namespace pyrnn
