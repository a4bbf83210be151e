// The machine's rooflines for one ISA level, measured: the fp32 FMA peak
// (register-only FMA chains on every thread; pyrnn.fma_peak_gflops, the
// benchmark's "% of peak") and the read bandwidth of a working set of a given
// size (vector loads from a per-thread buffer; pyrnn.memory_bandwidth), the
// bound of a small-batch step, which reads all of W_hh for little arithmetic.
#pragma once
#include <omp.h>

#include <cstdint>

#include "../runtime/aligned_buffer.h"
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

// One pass over p[0..n) with vector loads into kSums independent sums (n a
// multiple of kSums vectors).
template <int kSums>
inline void read_pass(const float* __restrict p, int64_t n, Vec<float>* sums) {
  constexpr int L = kLanes<float>;
  Vec<float> acc[kSums];
#pragma GCC unroll 16
  for (int c = 0; c < kSums; ++c) acc[c] = sums[c];
  for (int64_t i = 0; i < n; i += kSums * L)
#pragma GCC unroll 16
    for (int c = 0; c < kSums; ++c) acc[c] += loadu(p + i + c * L);
#pragma GCC unroll 16
  for (int c = 0; c < kSums; ++c) sums[c] = acc[c];
}

// Read bandwidth (GB/s, all threads together) of a `bytes` working set per
// thread, read again and again with vector loads into independent sums for
// about `seconds`.
inline double read_bandwidth_gbs(int64_t bytes, int nthreads, double seconds) {
  constexpr int L = kLanes<float>, kSums = 8;
  const int64_t n = std::max<int64_t>(kSums * L, bytes / int64_t(sizeof(float)) / (kSums * L) * (kSums * L));
  double read = 0, elapsed = 0;
  float sink = 0;
  std::vector<AlignedBuffer<float>> bufs = per_thread_buffers<float>(nthreads, size_t(n));
#pragma omp parallel num_threads(nthreads) reduction(+ : read, sink) reduction(max : elapsed)
  {
    float* p = bufs[size_t(omp_get_thread_num())].data();
    for (int64_t i = 0; i < n; ++i) p[i] = float(i & 7) * 1e-3f;  // touched by its own thread
    Vec<float> sums[kSums] = {};
    read_pass<kSums>(p, n, sums);  // warm the caches the set fits in
#pragma omp barrier
    const double start = omp_get_wtime();
    int64_t passes = 0;
    do {
      for (int rep = 0; rep < 4; ++rep) read_pass<kSums>(p, n, sums);
      passes += 4;
    } while (omp_get_wtime() - start < seconds);
    elapsed = omp_get_wtime() - start;
    read += double(passes) * double(n) * sizeof(float);
    for (int c = 0; c < kSums; ++c)
      for (int l = 0; l < L; ++l) sink += sums[c][l];
  }
  if (sink == 12345.678f) read += 1;  // keeps the loads alive
  return read / elapsed / 1e9;
}

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
