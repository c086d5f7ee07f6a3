// Kernels by name, for the driver. build.sh generates one registration file per kernel source:
//
//     #include "kernels/X.cu"
//     #include "registry.h"
//     static const emu::KernelInfo table[] = {emu::kernel_info("name", "kernels/X.cu", 128, &name), ...};
//     static const emu::Registration reg(table, N);
//
// kernel_info captures each kernel's parameter types, so the driver can check a case's arguments
// against the signature (dtype of every buffer, width of every scalar, size of every struct)
// before converting them: a mismatch is an error, not a silently misread argument.
#pragma once
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "launch.h"

namespace emu {

// One kernel argument as the case file gives it.
struct Arg {
    enum Kind { Buffer, Null, Scalar, Bytes } kind = Null;
    std::string text;        // as written, for messages
    void *ptr = nullptr;     // Buffer
    std::string dtype;       // Buffer: f32, bf16, f16, u32, i32
    std::string scalar;      // Scalar: i32, i64, u32, u64, f32, f64
    std::vector<unsigned char> bytes;  // Scalar value or Bytes blob, little-endian
};

using Body = std::function<void()>;
using Binder = Body (*)(void (*fn)(), const std::vector<Arg> &args, const char *kernel);

struct KernelInfo {
    const char *name;
    const char *file;
    unsigned max_threads;  // __launch_bounds__ maximum, 0 when the kernel declares none
    void (*fn)();
    Binder bind;
};

struct Registration {
    Registration(const KernelInfo *table, std::size_t n);
};

const std::vector<KernelInfo> &kernels();
const KernelInfo *find_kernel(const std::string &name);

namespace detail {

template <typename T>
constexpr const char *buffer_dtype() {
    if constexpr (std::is_same_v<T, float>) return "f32";
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return "bf16";
    else if constexpr (std::is_same_v<T, __half>) return "f16";
    else if constexpr (std::is_same_v<T, unsigned int>) return "u32";
    else if constexpr (std::is_same_v<T, int>) return "i32";
    else return nullptr;
}

template <typename T>
constexpr const char *scalar_type() {
    if constexpr (std::is_same_v<T, bool>) return nullptr;
    else if constexpr (std::is_floating_point_v<T>) return sizeof(T) == 4 ? "f32" : sizeof(T) == 8 ? "f64" : nullptr;
    else if constexpr (std::is_integral_v<T> && sizeof(T) == 4) return std::is_signed_v<T> ? "i32" : "u32";
    else if constexpr (std::is_integral_v<T> && sizeof(T) == 8) return std::is_signed_v<T> ? "i64" : "u64";
    else return nullptr;
}

[[noreturn]] inline void bad_arg(const char *kernel, std::size_t i, const Arg &a, const std::string &want) {
    throw Error(std::string("argument ") + std::to_string(i) + " of `" + kernel + "`: the kernel takes " + want +
                ", the case gives `" + a.text + "`");
}

template <typename T>
T convert(const Arg &a, std::size_t i, const char *kernel) {
    if constexpr (std::is_pointer_v<T>) {
        using E = std::remove_cv_t<std::remove_pointer_t<T>>;
        if (a.kind == Arg::Null) return nullptr;
        if constexpr (std::is_void_v<E>) {
            if (a.kind != Arg::Buffer) bad_arg(kernel, i, a, "a pointer");
        } else {
            constexpr const char *want = buffer_dtype<E>();
            static_assert(want != nullptr, "pointer parameter of an element type the driver cannot fill");
            if (a.kind != Arg::Buffer || a.dtype != want)
                bad_arg(kernel, i, a, std::string("a pointer to ") + want + " (or null)");
        }
        return static_cast<T>(a.ptr);
    } else if constexpr (scalar_type<T>() != nullptr) {
        constexpr const char *want = scalar_type<T>();
        if (a.kind != Arg::Scalar || a.scalar != want) bad_arg(kernel, i, a, std::string("a scalar ") + want);
        T v;
        std::memcpy(&v, a.bytes.data(), sizeof(T));
        return v;
    } else {
        static_assert(std::is_trivially_copyable_v<T>, "by-value parameters must be trivially copyable");
        if (a.kind != Arg::Bytes || a.bytes.size() != sizeof(T))
            bad_arg(kernel, i, a, "a struct of " + std::to_string(sizeof(T)) + " bytes");
        T v;
        std::memcpy(static_cast<void *>(&v), a.bytes.data(), sizeof(T));
        return v;
    }
}

template <typename... A, std::size_t... I>
std::tuple<A...> convert_all(const std::vector<Arg> &args, const char *kernel, std::index_sequence<I...>) {
    return std::tuple<A...>(convert<A>(args[I], I, kernel)...);
}

template <typename... A>
Body bind(void (*fn)(), const std::vector<Arg> &args, const char *kernel) {
    if (args.size() != sizeof...(A))
        throw Error(std::string("`") + kernel + "` takes " + std::to_string(sizeof...(A)) + " arguments, the case gives " +
                    std::to_string(args.size()));
    auto f = reinterpret_cast<void (*)(A...)>(fn);
    auto t = convert_all<A...>(args, kernel, std::index_sequence_for<A...>{});
    return [f, t] { std::apply(f, t); };
}

}  // namespace detail

template <typename... A>
KernelInfo kernel_info(const char *name, const char *file, unsigned max_threads, void (*fn)(A...)) {
    return {name, file, max_threads, reinterpret_cast<void (*)()>(fn), &detail::bind<A...>};
}

}  // namespace emu
