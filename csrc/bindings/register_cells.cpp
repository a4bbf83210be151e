// One cell step (the cells' fast path for generation loops). Kept lean: a
// Python loop calls this once per step.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "pyrnn/api.h"
#include "pyrnn/threads.h"

namespace py = pybind11;
using pyrnn::CellKind;

namespace {

template <class Real>
const Real* data_or_null(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<const Real*>(py::reinterpret_borrow<py::array>(o).data());
}

void require(bool ok, const char* what) {
  if (!ok) throw py::value_error(std::string("cell_step: ") + what);
}

template <class Real>
py::tuple step(CellKind cell, py::array x, py::object h, py::object c, py::array W_ih, py::array W_hh,
               py::object b_ih, py::object b_hh) {
  const int64_t B = x.shape(0), I = x.shape(1), H = W_hh.shape(1), G = pyrnn::gates_of(cell);
  auto ok = [&](const py::array& a, int64_t r, int64_t cdim) {
    return a.dtype().is(py::dtype::of<Real>()) && a.ndim() == 2 && a.shape(0) == r && a.shape(1) == cdim &&
           (a.flags() & py::array::c_style);
  };
  auto ok1 = [&](const py::object& o, int64_t n) {
    if (o.is_none()) return true;
    if (!py::isinstance<py::array>(o)) return false;
    auto a = py::reinterpret_borrow<py::array>(o);
    return a.dtype().is(py::dtype::of<Real>()) && a.ndim() == 1 && a.shape(0) == n && (a.flags() & py::array::c_style);
  };
  auto ok2 = [&](const py::object& o, int64_t r, int64_t cdim) {
    return o.is_none() || (py::isinstance<py::array>(o) && ok(py::reinterpret_borrow<py::array>(o), r, cdim));
  };
  require(ok(x, B, I) && ok(W_ih, G * H, I) && ok(W_hh, G * H, H), "x, W_ih, W_hh must be C-contiguous, one dtype, "
                                                                     "shapes [B,I], [G*H,I], [G*H,H]");
  require(ok2(h, B, H) && ok2(c, B, H), "h and c must be [B,H] arrays of the same dtype, or None");
  require(ok1(b_ih, G * H) && ok1(b_hh, G * H) && b_ih.is_none() == b_hh.is_none(),
          "b_ih and b_hh must both be [G*H] arrays of the same dtype, or both None");
  py::array_t<Real> h_out({B, H});
  py::object c_out = py::none();
  pyrnn::CellStepArgs<Real> a;
  a.cell = cell, a.B = B, a.I = I, a.H = H;
  a.x = static_cast<const Real*>(x.data()), a.h = data_or_null<Real>(h), a.c = data_or_null<Real>(c);
  a.W_ih = static_cast<const Real*>(W_ih.data()), a.W_hh = static_cast<const Real*>(W_hh.data());
  a.b_ih = data_or_null<Real>(b_ih), a.b_hh = data_or_null<Real>(b_hh);
  a.h_out = h_out.mutable_data();
  if (cell == CellKind::Lstm) {
    py::array_t<Real> co({B, H});
    a.c_out = co.mutable_data();
    c_out = co;
  }
  const int nth = pyrnn::get_num_threads();
  {
    py::gil_scoped_release nogil;
    pyrnn::cell_step<Real>(a, nth);
  }
  return py::make_tuple(h_out, c_out);
}

}  // namespace

void register_cells(py::module_& m) {
  m.def(
      "cell_step",
      [](CellKind cell, py::array x, py::object h, py::object c, py::array W_ih, py::array W_hh, py::object b_ih,
         py::object b_hh) {
        require(x.ndim() == 2 && W_hh.ndim() == 2, "x must be [B,I] and W_hh [G*H,H]");
        if (x.dtype().is(py::dtype::of<float>())) return step<float>(cell, x, h, c, W_ih, W_hh, b_ih, b_hh);
        if (x.dtype().is(py::dtype::of<double>())) return step<double>(cell, x, h, c, W_ih, W_hh, b_ih, b_hh);
        throw py::type_error("cell_step: x must have dtype float32 or float64");
      },
      "One cell step: returns (h1, c1 or None). Arrays must be C-contiguous and of one dtype.");
}
