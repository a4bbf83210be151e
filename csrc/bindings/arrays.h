// Array helpers shared by the bindings.
#pragma once
#include <pybind11/numpy.h>

namespace pyrnn_bindings {

// Whether `a` holds elements of `dt`: equivalence, not identity (an unpickled
// array's float32 dtype is not the float32 singleton); a non-native byte order
// is not equivalent.
inline bool has_dtype(const pybind11::array& a, const pybind11::dtype& dt) {
  return pybind11::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), dt.ptr());
}

}  // namespace pyrnn_bindings
