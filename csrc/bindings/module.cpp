// pyrnn._core: wires the areas together; each registers itself.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_config(py::module_& m);
void register_sequence(py::module_& m);
void register_cells(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyrnn's C++ kernels (use pyrnn.functional and the layers instead of calling these directly)";
  register_config(m);
  register_sequence(m);
  register_cells(m);
}
