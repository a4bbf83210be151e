// The sequence kernels compiled for the portable level (flags set in CMakeLists.txt).
#define PYRNN_ISA_NS portable
#define PYRNN_VBYTES 16
#define PYRNN_NREGS 16
#include "sequence_impl.h"

namespace pyrnn {
const KernelTable& kernels_portable() { return portable::make_table(); }
}  // namespace pyrnn
