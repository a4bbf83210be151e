// The kernels compiled for the avx512 level (flags set in CMakeLists.txt).
#define PYRNN_ISA_NS avx512
#define PYRNN_VBYTES 64
#define PYRNN_NREGS 32
#include "driver.h"

namespace pyrnn {
const KernelTable& kernels_avx512() { return avx512::make_table(); }
}  // namespace pyrnn
