// The schedule of a sequence call (runtime/workspace.h): which batch entries
// run at each step, and where each (step, entry) lives in the per-row buffers.
#include <algorithm>
#include <numeric>

#include "workspace.h"

namespace pyrnn {

Schedule make_schedule(int64_t T, int64_t B, const int64_t* lengths, bool reverse) {
  Schedule s;
  s.T = T, s.B = B, s.reverse = reverse;
  s.order.resize(size_t(B));
  std::iota(s.order.begin(), s.order.end(), int64_t(0));
  auto len_of = [&](int64_t b) { return lengths ? lengths[b] : T; };
  std::stable_sort(s.order.begin(), s.order.end(), [&](int64_t a, int64_t b) { return len_of(a) > len_of(b); });
  s.len.resize(size_t(B));
  for (int64_t i = 0; i < B; ++i) s.len[i] = len_of(s.order[i]);
  s.S = B ? s.len[0] : 0;
  s.active.assign(size_t(s.S), 0);
  s.offset.assign(size_t(s.S + 1), 0);
  for (int64_t st = 0; st < s.S; ++st) {
    int64_t n = 0;
    while (n < B && s.len[n] > st) ++n;  // a prefix, lengths decrease along i
    s.active[st] = n;
    s.offset[st + 1] = s.offset[st] + n;
  }
  s.rows = s.offset[s.S];
  s.row_b.resize(size_t(s.rows));
  s.row_t.resize(size_t(s.rows));
  for (int64_t st = 0; st < s.S; ++st)
    for (int64_t i = 0; i < s.active[st]; ++i) {
      int64_t row = s.offset[st] + i;
      s.row_b[row] = s.order[i];
      s.row_t[row] = reverse ? s.len[i] - 1 - st : st;
    }
  return s;
}

}  // namespace pyrnn
