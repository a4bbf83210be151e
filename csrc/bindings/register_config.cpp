// Build information, ISA levels, threads and the FMA roofline.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "arrays.h"
#include "build_info.h"
#include "pyrnn/isa.h"
#include "pyrnn/api.h"
#include "pyrnn/pool.h"
#include "pyrnn/cache.h"
#include "pyrnn/threads.h"

namespace py = pybind11;

void register_config(py::module_& m) {
  m.def("build_info", [] {
    py::dict d;
    d["compiler"] = PYRNN_COMPILER;
    d["flags"] = PYRNN_FLAGS_COMMON;
    py::dict isa_flags;
#if defined(PYRNN_HAVE_X86)
#if defined(PYRNN_NO_AVX512)
    isa_flags["avx512"] = "(not built: PYRNN_NO_AVX512)";
#else
    isa_flags["avx512"] = PYRNN_FLAGS_AVX512;
#endif
    isa_flags["avx2"] = PYRNN_FLAGS_AVX2;
#endif
    isa_flags["baseline"] = PYRNN_FLAGS_BASELINE;
    d["isa_flags"] = isa_flags;
    d["openmp"] = int(_OPENMP);
    return d;
  });
  m.def(
      "blocking_caches",
      [] {
        const pyrnn::CacheSizes& c = pyrnn::cache_sizes();
        py::dict d;
        d["L1"] = c.l1, d["L2"] = c.l2, d["L3"] = c.l3;
        return d;
      },
      "The cache sizes (bytes) the kernels' blocking derives from (pyrnn/cache.h): this CPU's, or defaults.");
  m.def("isa_supported", [] {
    std::vector<std::string> out;
    for (auto i : pyrnn::isa_supported()) out.push_back(pyrnn::isa_name(i));
    return out;
  });
  m.def("isa_selected", [] { return std::string(pyrnn::isa_name(pyrnn::isa_selected())); },
        "The level kernels use now (PYRNN_ISA if set); ValueError if PYRNN_ISA is invalid or unsupported.");
  m.def(
      "read_settings",
      [] {
        const pyrnn::EnvSnapshot env;  // reads PYRNN_ISA (published for XLA) and the settings read once
        return std::string(pyrnn::isa_name(pyrnn::isa_selected()));
      },
      "isa_selected(), having read every setting the kernels consult (PYRNN_ISA, and once per process "
      "OMP_NUM_THREADS, PYRNN_CACHE_MB, PYRNN_PROFILE, the cache sizes) here, under the GIL: for callers "
      "whose kernels then run without it (pyrnn.jax's custom calls).");
  m.def("get_num_threads", &pyrnn::get_num_threads);
  m.def("set_num_threads", &pyrnn::set_num_threads, py::arg("n"));
  m.def("set_adaptive_threads", &pyrnn::set_adaptive_threads);
  m.def("threads_adaptive", &pyrnn::threads_adaptive);
  m.def("thread_stats", [] {
    auto st = pyrnn::thread_stats();
    py::dict d;
    d["keys"] = st.keys;
    d["calls_one_thread"] = st.calls_one;
    d["calls_all_threads"] = st.calls_limit;
    d["timed_seconds"] = st.timed_seconds;
    return d;
  });
  m.def("reset_thread_stats", &pyrnn::reset_thread_stats);
  m.def("num_procs", [] { return omp_get_num_procs(); });
  m.def("cache_info", [] {
    auto st = pyrnn::pool_stats();
    py::dict d;
    d["cached_bytes"] = st.cached_bytes;
    d["cached_blocks"] = st.cached_blocks;
    d["limit_bytes"] = st.limit_bytes;
    d["hits"] = st.hits;
    d["misses"] = st.misses;
    return d;
  });
  m.def("set_cache_limit", [](size_t bytes) { pyrnn::pool_set_limit(bytes); }, py::arg("bytes"));
  m.def("empty_cache", [] { pyrnn::pool_release(); });
  m.def(
      "fma_peak_gflops",
      [](int nthreads, double seconds) {
        pyrnn_bindings::KernelCall nogil;
        return pyrnn::measure_fma_peak_gflops(nthreads, seconds);
      },
      py::arg("nthreads"), py::arg("seconds") = 0.2);
  m.def(
      "read_bandwidth_gbs",
      [](int64_t bytes, int nthreads, double seconds) {
        if (bytes < 1 || nthreads < 1 || !(seconds > 0)) throw py::value_error("bytes, nthreads and seconds must be positive");
        pyrnn_bindings::KernelCall nogil;
        return pyrnn::measure_read_bandwidth_gbs(bytes, nthreads, seconds);
      },
      py::arg("bytes"), py::arg("nthreads"), py::arg("seconds") = 0.1);
}
