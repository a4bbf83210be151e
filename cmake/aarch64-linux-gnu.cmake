# Cross-compiling for 64-bit Arm Linux with Debian's GNU cross toolchain
# (apt-get install g++-aarch64-linux-gnu; qemu-user runs the results):
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
#         -DPYRNN_PYTHON=OFF -DPYRNN_SELFTEST=ON
# Only the baseline (NEON) kernels are built for aarch64 (CMakeLists.txt).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(PYRNN_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${PYRNN_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${PYRNN_CROSS_TRIPLE}-g++)

# GCC's note that std::pair's argument passing changed in GCC 10.1 concerns
# linking with code built by GCC < 10, which a cross build never does.
set(CMAKE_CXX_FLAGS_INIT -Wno-psabi)

# Headers and libraries from the target's sysroot only; programs from the host.
set(CMAKE_FIND_ROOT_PATH /usr/${PYRNN_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# try_run, ctest and `cmake -E` consumers run target programs under qemu-user.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/${PYRNN_CROSS_TRIPLE})
