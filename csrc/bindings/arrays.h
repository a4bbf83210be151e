// Array helpers shared by the bindings.
#pragma once
#include <pybind11/numpy.h>

#include <string>

#include "pyrnn/api.h"

namespace pyrnn_bindings {

// Whether `a` holds elements of `dt`: equivalence, not identity (an unpickled
// array's float32 dtype is not the float32 singleton); a non-native byte order
// is not equivalent.
inline bool has_dtype(const pybind11::array& a, const pybind11::dtype& dt) {
  return pybind11::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), dt.ptr());
}

// Weight precision of packed weights by name: "same" (the weights' dtype),
// "int8", "bf16"; the reduced ones need float32 weights.
inline pyrnn::WeightPrecision parse_precision(const std::string& name, bool f64) {
  using P = pyrnn::WeightPrecision;
  const P p = name == "int8" ? P::Int8 : name == "bf16" ? P::BF16 : P::Same;
  if (p == P::Same && name != "same")
    throw pybind11::value_error("precision: expected 'same', 'int8' or 'bf16', got '" + name + "'");
  if (p != P::Same && f64) throw pybind11::type_error("precision " + name + " needs float32 weights, got float64");
  return p;
}
inline const char* precision_name(pyrnn::WeightPrecision p) {
  return p == pyrnn::WeightPrecision::Int8 ? "int8" : p == pyrnn::WeightPrecision::BF16 ? "bf16" : "same";
}

}  // namespace pyrnn_bindings
