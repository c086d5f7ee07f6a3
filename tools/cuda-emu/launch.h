// Host-side API of the emulator, for C++ drivers (driver.cpp is one).
//
//     emu::launch("my_kernel", dim3(blocks), dim3(256), [&] { my_kernel(x, y, n); });
//
// runs `body` in every thread of every block, blocks one after another, each block's threads as
// fibers on the calling OS thread. It throws emu::Error when the launch configuration is invalid,
// when a barrier can never complete (divergent __syncthreads, a warp collective missing lanes,
// threads that exited while others wait), when a shuffle reads a lane that does not exist, or
// when the kernel throws. Launches are not reentrant and must come from one OS thread at a time:
// `__shared__` variables are statics, shared by every launch.
#pragma once
#include <cstddef>
#include <functional>
#include <stdexcept>
#include <string>

#include "emu.h"

namespace emu {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The order in which blocks, and the threads inside a block, are first scheduled. A result that
// changes with the order depends on a race that the barriers do not order.
enum class Order { Forward, Reverse };
void set_order(Order order);

void launch(const char *name, dim3 grid, dim3 block, std::function<void()> body);

// "kernel NAME, block (x,y,z), thread (x,y,z)" for the emulated thread running now, or "outside
// any kernel". For fault handlers: it formats into `buf` without allocating.
void describe_current(char *buf, std::size_t n);

// True when `addr` lies in the guard page below an emulated thread's stack (a stack overflow).
bool is_stack_guard(const void *addr);

// Bytes of stack each emulated thread gets.
constexpr std::size_t kStackBytes = 256 * 1024;

}  // namespace emu
