// One cell step (the cells' fast path for generation loops). Kept lean: a
// Python loop calls this once per step.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "arrays.h"
#include "pyrnn/api.h"
#include "pyrnn/threads.h"

namespace py = pybind11;
using pyrnn_bindings::has_dtype;
using pyrnn_bindings::parse_precision;
using pyrnn_bindings::precision_name;
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
    return has_dtype(a, py::dtype::of<Real>()) && a.ndim() == 2 && a.shape(0) == r && a.shape(1) == cdim &&
           (a.flags() & py::array::c_style);
  };
  auto ok1 = [&](const py::object& o, int64_t n) {
    if (o.is_none()) return true;
    if (!py::isinstance<py::array>(o)) return false;
    auto a = py::reinterpret_borrow<py::array>(o);
    return has_dtype(a, py::dtype::of<Real>()) && a.ndim() == 1 && a.shape(0) == n && (a.flags() & py::array::c_style);
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
    pyrnn_bindings::KernelCall nogil;
    pyrnn::cell_step<Real>(a, nth);
  }
  return py::make_tuple(h_out, c_out);
}

// A cell's packed weights (pyrnn/api.h pack_cell), for one dtype.
struct PackedCellHolder {
  CellKind cell = CellKind::Lstm;
  int64_t I = 0, H = 0;
  bool f64 = false;
  pyrnn::WeightPrecision precision = pyrnn::WeightPrecision::Same;
  pyrnn::PackedCellPtr<float> pf;
  pyrnn::PackedCellPtr<double> pd;
};

template <class Real>
void pack(PackedCellHolder& p, CellKind cell, py::array W_ih, py::array W_hh, py::object b_ih, py::object b_hh,
          const std::string& precision) {
  p.precision = parse_precision(precision, std::is_same_v<Real, double>);
  const int64_t G = pyrnn::gates_of(cell);
  require(W_ih.ndim() == 2 && W_hh.ndim() == 2, "W_ih and W_hh must be 2-D");
  const int64_t H = W_hh.shape(1), I = W_ih.shape(1);
  auto ok = [&](const py::array& a, int64_t r, int64_t cdim) {
    return has_dtype(a, py::dtype::of<Real>()) && a.shape(0) == r && a.shape(1) == cdim &&
           (a.flags() & py::array::c_style);
  };
  auto ok1 = [&](const py::object& o) {
    if (o.is_none()) return true;
    if (!py::isinstance<py::array>(o)) return false;
    auto a = py::reinterpret_borrow<py::array>(o);
    return has_dtype(a, py::dtype::of<Real>()) && a.ndim() == 1 && a.shape(0) == G * H &&
           (a.flags() & py::array::c_style);
  };
  require(H >= 1 && I >= 1 && ok(W_ih, G * H, I) && ok(W_hh, G * H, H),
          "W_ih, W_hh must be C-contiguous, one dtype, shapes [G*H,I], [G*H,H]");
  require(ok1(b_ih) && ok1(b_hh) && b_ih.is_none() == b_hh.is_none(),
          "b_ih and b_hh must both be [G*H] arrays of the same dtype, or both None");
  pyrnn::CellStepArgs<Real> a;
  a.cell = cell, a.I = I, a.H = H;
  a.W_ih = static_cast<const Real*>(W_ih.data()), a.W_hh = static_cast<const Real*>(W_hh.data());
  a.b_ih = data_or_null<Real>(b_ih), a.b_hh = data_or_null<Real>(b_hh);
  p.cell = cell, p.I = I, p.H = H;
  pyrnn_bindings::KernelCall nogil;
  if constexpr (std::is_same_v<Real, float>)
    p.pf = pyrnn::pack_cell<float>(a, p.precision);
  else
    p.f64 = true, p.pd = pyrnn::pack_cell<double>(a);
}

template <class Real>
py::tuple packed_step(const PackedCellHolder& p, py::array x, py::object h, py::object c) {
  const int64_t B = x.ndim() == 2 ? x.shape(0) : -1, H = p.H;
  auto ok = [&](const py::array& a, int64_t cdim) {
    return has_dtype(a, py::dtype::of<Real>()) && a.ndim() == 2 && a.shape(0) == B && a.shape(1) == cdim &&
           (a.flags() & py::array::c_style);
  };
  auto ok2 = [&](const py::object& o) { return o.is_none() || (py::isinstance<py::array>(o) && ok(py::reinterpret_borrow<py::array>(o), H)); };
  require(ok(x, p.I), "x must be a C-contiguous [B, I] array of the packed weights' dtype");
  require(ok2(h) && ok2(c), "h and c must be [B, H] arrays of the packed weights' dtype, or None");
  py::array_t<Real> h_out({B, H});
  py::object c_out = py::none();
  pyrnn::CellStepArgs<Real> a;
  a.cell = p.cell, a.B = B, a.I = p.I, a.H = H;
  a.x = static_cast<const Real*>(x.data()), a.h = data_or_null<Real>(h), a.c = data_or_null<Real>(c);
  a.h_out = h_out.mutable_data();
  if (p.cell == CellKind::Lstm) {
    py::array_t<Real> co({B, H});
    a.c_out = co.mutable_data();
    c_out = co;
  }
  const int nth = pyrnn::get_num_threads();
  {
    pyrnn_bindings::KernelCall nogil;
    if constexpr (std::is_same_v<Real, float>)
      pyrnn::packed_cell_step<float>(*p.pf, a, nth);
    else
      pyrnn::packed_cell_step<double>(*p.pd, a, nth);
  }
  return py::make_tuple(h_out, c_out);
}

}  // namespace

void register_cells(py::module_& m) {
  py::class_<PackedCellHolder>(m, "PackedCell",
                               "A cell's weights packed once for many steps (a copy: later changes to the arrays "
                               "packed from have no effect).")
      .def(py::init([](CellKind cell, py::array W_ih, py::array W_hh, py::object b_ih, py::object b_hh,
                       const std::string& precision) {
             auto p = std::make_unique<PackedCellHolder>();
             if (has_dtype(W_ih, py::dtype::of<float>()))
               pack<float>(*p, cell, W_ih, W_hh, b_ih, b_hh, precision);
             else if (has_dtype(W_ih, py::dtype::of<double>()))
               pack<double>(*p, cell, W_ih, W_hh, b_ih, b_hh, precision);
             else
               throw py::type_error("W_ih must have dtype float32 or float64");
             return p;
           }),
           py::arg("cell"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih") = py::none(), py::arg("b_hh") = py::none(),
           py::arg("precision") = "same")
      .def(
          "step",
          [](const PackedCellHolder& p, py::array x, py::object h, py::object c) {
            return p.f64 ? packed_step<double>(p, x, h, c) : packed_step<float>(p, x, h, c);
          },
          py::arg("x"), py::arg("h") = py::none(), py::arg("c") = py::none(),
          "One step: returns (h1, c1 or None).")
      .def_readonly("cell", &PackedCellHolder::cell)
      .def_property_readonly("precision", [](const PackedCellHolder& p) { return precision_name(p.precision); })
      .def_property_readonly("dtype", [](const PackedCellHolder& p) { return p.f64 ? py::dtype::of<double>() : py::dtype::of<float>(); })
      .def_property_readonly("nbytes", [](const PackedCellHolder& p) {
        return p.f64 ? pyrnn::packed_cell_bytes(*p.pd) : pyrnn::packed_cell_bytes(*p.pf);
      });

  m.def(
      "cell_step",
      [](CellKind cell, py::array x, py::object h, py::object c, py::array W_ih, py::array W_hh, py::object b_ih,
         py::object b_hh) {
        require(x.ndim() == 2 && W_hh.ndim() == 2, "x must be [B,I] and W_hh [G*H,H]");
        if (has_dtype(x, py::dtype::of<float>())) return step<float>(cell, x, h, c, W_ih, W_hh, b_ih, b_hh);
        if (has_dtype(x, py::dtype::of<double>())) return step<double>(cell, x, h, c, W_ih, W_hh, b_ih, b_hh);
        throw py::type_error("cell_step: x must have dtype float32 or float64");
      },
      "One cell step: returns (h1, c1 or None). Arrays must be C-contiguous and of one dtype.");
  pyrnn_bindings::refuse_pickle(m.attr("PackedCell"));
}
