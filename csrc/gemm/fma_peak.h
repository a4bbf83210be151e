// The machine's fp32 roofline for one ISA level, measured: register-only FMA
// chains on every thread (pyrnn.fma_peak_gflops, the benchmark's "% of peak").
#pragma once
#include <omp.h>

#include "simd.h"

namespace pyrnn {
namespace PYRNN_ISA_NS {

// Register-only FMA chains: the machine's fp32 roofline for this ISA.
inline double fma_peak_gflops(int nthreads, double seconds) {
  constexpr int L = kLanes<float>, kChains = 12;
  double flops = 0, t0 = omp_get_wtime(), t1 = t0;
  float sink = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : flops, sink)
  {
    Vec<float> acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = bcast(float(c) * 1e-3f);
    const Vec<float> mul = bcast(0.9999999f), add = bcast(1e-7f);
    double start = omp_get_wtime();
    long iters = 0;
    do {
      for (int rep = 0; rep < 100000; ++rep)
#pragma GCC unroll 12
        for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * mul + add;
      iters += 100000;
    } while (omp_get_wtime() - start < seconds);
    flops += double(iters) * kChains * L * 2;
    for (int c = 0; c < kChains; ++c)
      for (int l = 0; l < L; ++l) sink += acc[c][l];
  }
  t1 = omp_get_wtime();
  if (sink == 12345.678f) flops += 1;  // keeps the chains alive
  return flops / (t1 - t0) / 1e9;
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
