// cache_sizes() (pyrnn/cache.h): /sys/devices/system/cpu/cpu0/cache/index*/.
#include <algorithm>
#include <fstream>
#include <string>

#include "pyrnn/cache.h"

namespace pyrnn {

namespace {

bool read_line(const std::string& path, std::string& out) {
  std::ifstream f(path);
  return bool(std::getline(f, out));
}

CacheSizes read_cache_sizes() {
  CacheSizes c;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::string type, level, size;
    if (!read_line(dir + "type", type) || !read_line(dir + "level", level) || !read_line(dir + "size", size)) continue;
    if ((type != "Data" && type != "Unified") || size.empty()) continue;
    int64_t bytes = 0;
    try {
      bytes = std::stoll(size);
    } catch (...) {
      continue;
    }
    const char unit = size.back();
    bytes <<= unit == 'K' ? 10 : unit == 'M' ? 20 : unit == 'G' ? 30 : 0;
    // Plausible ranges only: a bad report must not make blocks degenerate.
    if (level == "1" && bytes >= (16 << 10) && bytes <= (256 << 10)) c.l1 = bytes;
    if (level == "2" && bytes >= (128 << 10) && bytes <= (16 << 20)) c.l2 = bytes;
    if (level == "3" && bytes >= (1 << 20)) c.l3 = bytes;
  }
  return c;
}

}  // namespace

const CacheSizes& cache_sizes() {
  static const CacheSizes sizes = read_cache_sizes();
  return sizes;
}

}  // namespace pyrnn
