// pyrnn's thread count: its own setting, passed to every parallel region as
// num_threads, so PyTorch's or NumPy's thread settings are not touched.
#include "pyrnn/threads.h"

#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace pyrnn {

namespace {
int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);  // "4" or the first entry of "4,2"
    if (end != env && n >= 1) return int(n);
  }
  return omp_get_num_procs();
}
std::atomic<int>& current() {
  static std::atomic<int> n{default_threads()};
  return n;
}
}  // namespace

int get_num_threads() { return current().load(); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("num_threads must be a positive integer, got " + std::to_string(n));
  current().store(n);
}

}  // namespace pyrnn
