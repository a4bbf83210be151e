// pyrnn._core: wires the areas together; each registers itself.
#include <pybind11/pybind11.h>

#include "pyrnn/isa.h"

namespace py = pybind11;

void register_config(py::module_& m);
void register_sequence(py::module_& m);
void register_layernorm(py::module_& m);
void register_cells(py::module_& m);
#if defined(PYRNN_HAVE_XLA_FFI)
void register_xla_ffi(py::module_& m);
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyrnn's C++ kernels (use pyrnn.functional and the layers instead of calling these directly)";
  // PYRNN_ISA read once now (isa_selected publishes it for XLA's custom calls, which hold no GIL);
  // an invalid value is reported by the first call that uses it. (Not an EnvSnapshot: the settings
  // read once, OMP_NUM_THREADS and PYRNN_CACHE_MB among them, stay read at first use.)
  try {
    (void)pyrnn::isa_selected();
  } catch (const std::exception&) {
  }
  register_config(m);
  register_sequence(m);
  register_layernorm(m);
  register_cells(m);
  // XLA custom-call targets for pyrnn.jax (csrc/bindings/xla_ffi.cpp): a dict
  // of PyCapsules, or None when the build did not find XLA's FFI headers.
#if defined(PYRNN_HAVE_XLA_FFI)
  register_xla_ffi(m);
#else
  m.attr("xla_ffi_targets") = py::none();
#endif
}
