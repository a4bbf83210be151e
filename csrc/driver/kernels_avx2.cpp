// The kernels compiled for the avx2 level (flags set in CMakeLists.txt).
#define PYRNN_ISA_NS avx2
#define PYRNN_VBYTES 32
#define PYRNN_NREGS 16
#include "driver.h"

namespace pyrnn {
const KernelTable& kernels_avx2() { return avx2::make_table(); }
}  // namespace pyrnn
