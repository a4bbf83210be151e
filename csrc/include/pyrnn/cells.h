// The cell vocabulary: one line per cell kind, read by the C++ (enum, gate
// counts, kernel dispatch, profile labels) and, through pyrnn._core.cells(),
// by Python (pyrnn/_cells.py).
//
//   X(Enum, PYTHON_ENUM, "name", "family", gates)
//   name:   what Python, tests and PYRNN_PROFILE call it
//   family: the torch.nn module it implements ("rnn", "lstm" or "gru")
//   gates:  gate groups per unit in W_ih / W_hh (PyTorch layout)
//
// Adding a cell kind: a line here and a file in csrc/cells/ with its traits
// and element-wise code, listed in csrc/cells/all.h. The kernels check at
// compile time that the file's gate count agrees with this table.
#pragma once

namespace pyrnn {

#define PYRNN_CELLS(X)                                    \
  X(RnnTanh, RNN_TANH, "rnn_tanh", "rnn", 1)              \
  X(RnnRelu, RNN_RELU, "rnn_relu", "rnn", 1)              \
  X(RnnLeaky, RNN_LEAKY, "rnn_leaky", "rnn", 1)           \
  X(Lstm, LSTM, "lstm", "lstm", 4)                        \
  X(Gru, GRU, "gru", "gru", 3)                            \
  X(GruResetBefore, GRU_RESET_BEFORE, "gru_reset_before", "gru", 3)

enum class CellKind : int {
#define PYRNN_CELL_ENUM(E, PY, name, family, gates) E,
  PYRNN_CELLS(PYRNN_CELL_ENUM)
#undef PYRNN_CELL_ENUM
};

struct CellInfo {
  CellKind kind;
  const char* python_enum;
  const char* name;
  const char* family;
  int gates;
};

inline constexpr CellInfo kCells[] = {
#define PYRNN_CELL_INFO(E, PY, name, family, gates) {CellKind::E, #PY, name, family, gates},
    PYRNN_CELLS(PYRNN_CELL_INFO)
#undef PYRNN_CELL_INFO
};

constexpr const CellInfo& cell_info(CellKind k) { return kCells[int(k)]; }
constexpr int gates_of(CellKind k) { return cell_info(k).gates; }

}  // namespace pyrnn
