// One table of entry points per ISA translation unit; picked once per call.
#pragma once
#include <type_traits>

#include "../runtime/workspace.h"
#include "pyrnn/api.h"

namespace pyrnn {

// The kernels of one dtype.
template <class T>
struct KernelOps {
  void (*forward)(const ForwardArgs<T>&, Workspace<T>&, bool training, int nthreads);
  void (*backward)(const Workspace<T>&, const ForwardArgs<T>&, const BackwardArgs<T>&, int nthreads);
  void (*cell_step)(const CellStepArgs<T>&, int nthreads);
  void (*pack_cell)(const CellStepArgs<T>&, WeightPrecision, PackedCell<T>&);
  void (*packed_step)(const PackedCell<T>&, const CellStepArgs<T>&, int nthreads);
  void (*pack_recurrence)(const ForwardArgs<T>&, WeightPrecision, PackedRecurrence<T>&);
  void (*pack_backward)(const Workspace<T>&, const ForwardArgs<T>&, PackedBackward<T>&);
  // The training workspace's layout in one block for `rows` packed rows.
  ResidualLayout (*residual_layout)(const ForwardArgs<T>&, int64_t rows);
  // Layer-normalised LSTM/GRU (layernorm.h).
  void (*ln_forward)(const LayerNormArgs<T>&, LnWorkspace<T>&, bool training, int nthreads);
  void (*ln_backward)(const LnWorkspace<T>&, const LayerNormArgs<T>&, const LayerNormGrads<T>&, int nthreads);
};

struct KernelTable {
  KernelOps<float> f32;
  KernelOps<double> f64;
  double (*fma_peak)(int nthreads, double seconds);
  double (*read_bandwidth)(int64_t bytes, int nthreads, double seconds);

  template <class T>
  const KernelOps<T>& ops() const {
    if constexpr (std::is_same_v<T, float>)
      return f32;
    else
      return f64;
  }
};

const KernelTable& kernels_baseline();
#if defined(PYRNN_HAVE_X86)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#endif

const KernelTable& kernels_for(Isa isa);

}  // namespace pyrnn
