// The kernels compiled for the baseline level (16-byte SIMD: SSE2 on x86-64, NEON on aarch64) (flags set in CMakeLists.txt).
#define PYRNN_ISA_NS baseline
#define PYRNN_VBYTES 16
#define PYRNN_NREGS 16
#include "driver.h"

namespace pyrnn {
const KernelTable& kernels_baseline() { return baseline::make_table(); }
}  // namespace pyrnn
