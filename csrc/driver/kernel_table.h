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
};

const KernelTable& kernels_baseline();
#if defined(PYRNN_HAVE_X86)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#endif

const KernelTable& kernels_for(Isa isa);

}  // namespace pyrnn
