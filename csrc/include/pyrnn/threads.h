// pyrnn's own thread count, separate from any other OpenMP user in the process.
#pragma once

namespace pyrnn {

// Default: OMP_NUM_THREADS if set to a positive integer, otherwise the core count.
int get_num_threads();
// n >= 1; throws std::invalid_argument otherwise.
void set_num_threads(int n);

}  // namespace pyrnn
