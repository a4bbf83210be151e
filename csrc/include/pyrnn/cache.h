// This CPU's data cache sizes, read once at run time (Linux sysfs), which the
// GEMM and step blocking derive from (csrc/gemm/gemm.h, driver/driver.h)
// instead of constants tuned on one machine.
#pragma once
#include <cstdint>

namespace pyrnn {

struct CacheSizes {
  int64_t l1 = 32 << 10;   // one core's L1 data cache
  int64_t l2 = 512 << 10;  // one core's L2
  int64_t l3 = 32 << 20;   // the L3 this core shares
};

// The sizes of cpu0's caches; where the system does not report a level (or
// reports an implausible size) the default above stands, which is what the
// blocking was first tuned for (AMD Zen 3).
const CacheSizes& cache_sizes();

}  // namespace pyrnn
