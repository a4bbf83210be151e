// One table of entry points per ISA translation unit; picked once per call.
#pragma once
#include "../runtime/workspace.h"
#include "pyrnn/api.h"

namespace pyrnn {

struct KernelTable {
  void (*forward_f32)(const ForwardArgs<float>&, Workspace<float>&, bool training, int nthreads);
  void (*forward_f64)(const ForwardArgs<double>&, Workspace<double>&, bool training, int nthreads);
  void (*backward_f32)(const Workspace<float>&, const ForwardArgs<float>&, const BackwardArgs<float>&, int);
  void (*backward_f64)(const Workspace<double>&, const ForwardArgs<double>&, const BackwardArgs<double>&, int);
  double (*fma_peak)(int nthreads, double seconds);
  void (*cell_f32)(const CellStepArgs<float>&, int nthreads);
  void (*cell_f64)(const CellStepArgs<double>&, int nthreads);
  double (*read_bandwidth)(int64_t bytes, int nthreads, double seconds);
  void (*pack_cell_f32)(const CellStepArgs<float>&, PackedCell<float>&);
  void (*pack_cell_f64)(const CellStepArgs<double>&, PackedCell<double>&);
  void (*packed_step_f32)(const PackedCell<float>&, const CellStepArgs<float>&, int nthreads);
  void (*packed_step_f64)(const PackedCell<double>&, const CellStepArgs<double>&, int nthreads);
  void (*pack_recurrence_f32)(const ForwardArgs<float>&, PackedRecurrence<float>&);
  void (*pack_recurrence_f64)(const ForwardArgs<double>&, PackedRecurrence<double>&);
};

const KernelTable& kernels_baseline();
#if defined(PYRNN_HAVE_X86)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#endif

const KernelTable& kernels_for(Isa isa);

}  // namespace pyrnn
