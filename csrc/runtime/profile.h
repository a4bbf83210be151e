// PYRNN_PROFILE=1: every forward/backward call prints to stderr the wall time
// of its phases and, for the time loop, each thread's busy time and its time
// waiting at the per-step barriers (min/max over threads). A diagnostic for
// multi-core scaling: the extra barriers between phases run only when it is
// on, and when it is off each hook is one predictable branch.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "pyrnn/isa.h"

namespace pyrnn {
// Inside the ISA namespace like everything the kernel files compile, so the
// linker never picks one level's copy for another.
namespace PYRNN_ISA_NS {

inline bool profile_enabled() { return profile_requested(); }

class PhaseProfile {
 public:
  PhaseProfile(std::string what, int nthreads, bool enable = true)
      : on(enable && profile_enabled()), what_(std::move(what)), busy_(on ? size_t(nthreads) : 0),
        wait_(on ? size_t(nthreads) : 0), last_(on ? size_t(nthreads) : 0) {
    if (on) start_ = mark_ = omp_get_wtime();
  }
  ~PhaseProfile() {
    if (!on) return;
    std::fprintf(stderr, "pyrnn-profile %s: %s| total %.2f ms\n", what_.c_str(), text_.c_str(),
                 (omp_get_wtime() - start_) * 1e3);
  }
  // All threads of the region call it: a barrier, then thread 0 records the
  // time since the previous phase under `name`.
  void phase(const char* name) {
    if (!on) return;
#pragma omp barrier
    if (omp_get_thread_num() == 0) record(name);
#pragma omp barrier
  }
  void loop_start(int tid) {
    if (on) last_[size_t(tid)] = omp_get_wtime();
  }
  double before_barrier() const { return on ? omp_get_wtime() : 0.0; }
  void after_barrier(int tid, double t_before) {
    if (!on) return;
    double now = omp_get_wtime();
    busy_[size_t(tid)] += t_before - last_[size_t(tid)];
    wait_[size_t(tid)] += now - t_before;
    last_[size_t(tid)] = now;
  }
  // Thread 0 after the loop's last barrier: the loop phase with the busy/wait split.
  void loop_end(const char* name, int nt) {
    if (!on) return;
#pragma omp barrier
    if (omp_get_thread_num() == 0) {
      record(name);
      auto mm = [nt](const std::vector<double>& v) {
        auto r = std::minmax_element(v.begin(), v.begin() + nt);
        return std::make_pair(*r.first * 1e3, *r.second * 1e3);
      };
      auto b = mm(busy_), w = mm(wait_);
      char buf[160];
      std::snprintf(buf, sizeof buf, "(busy %.2f-%.2f, barrier wait %.2f-%.2f) ", b.first, b.second, w.first, w.second);
      text_ += buf;
    }
#pragma omp barrier
  }

  const bool on;

 private:
  void record(const char* name) {
    double now = omp_get_wtime();
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s %.2f ", name, (now - mark_) * 1e3);
    text_ += buf;
    mark_ = now;
  }
  std::string what_, text_;
  double start_ = 0, mark_ = 0;
  std::vector<double> busy_, wait_, last_;
};

}  // namespace PYRNN_ISA_NS
}  // namespace pyrnn
