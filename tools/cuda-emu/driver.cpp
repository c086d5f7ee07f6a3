// The emulator's command-line driver: runs the launches a case file describes against the kernels
// registered at build time (build.sh), and writes the requested buffers back as f32.
//
//     driver CASEFILE        run the case
//     driver --list          print the registered kernels: name, source file, launch bound
//
// Case file (text, one directive a line, `#` starts a comment; paths are relative to the case
// file's folder):
//
//     buffer NAME DTYPE COUNT ROLE [FILE]
//         DTYPE f32, bf16, f16 (FILE holds COUNT little-endian f32, converted with the shim's
//         round-to-nearest-even) or u32, i32 (FILE holds the raw 32-bit values).
//         ROLE in: read from FILE and read-only while kernels run (a write faults);
//              inout: read from FILE, writable;
//              out: filled with 0xff bytes (NaN in every float dtype), writable.
//     launch KERNEL GX GY GZ BX BY BZ ARG...
//         ARG: a buffer NAME | null | i32:V | i64:V | u32:V | u64:V | f32:V | f64:V
//              | i64s:V,V,... (a struct of 64-bit integers) | bytes:HEX (any struct)
//     output NAME FILE      float buffers as f32, integer buffers as their raw values
//     orders forward reverse
//         run every launch once per listed schedule order (from the same initial buffers) and
//         fail if any writable buffer differs between orders (default: forward only)
//     timeout SECONDS       (default 120)
//
// Every buffer ends within 16 bytes of the end of its own pages (its start stays 16-byte aligned),
// between two 1 MiB inaccessible guard regions, and the unused bytes of its pages hold a canary
// that is checked after every launch: out-of-bounds accesses are reported with the buffer, the
// offset and the emulated thread (writes always; reads when they reach a guard region).
//
// Exit status: 0 ok; 1 bad usage or case file; 2 an emulation error (deadlock, divergent barrier,
// argument mismatch, launch bound exceeded, canary overwritten); 3 a memory fault; 4 results that
// depend on the schedule order; 5 timeout.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "launch.h"
#include "registry.h"

namespace emu {

static std::vector<KernelInfo> &registry() {
    static std::vector<KernelInfo> r;
    return r;
}

Registration::Registration(const KernelInfo *table, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) registry().push_back(table[i]);
}

const std::vector<KernelInfo> &kernels() { return registry(); }

const KernelInfo *find_kernel(const std::string &name) {
    for (const KernelInfo &k : registry())
        if (name == k.name) return &k;
    return nullptr;
}

}  // namespace emu

namespace {

struct CaseError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Buffer {
    std::string name, dtype, role;
    std::size_t count = 0, esize = 0;
    char *region = nullptr;  // guard | data pages | guard
    std::size_t region_bytes = 0, data_pages_bytes = 0;
    char *data = nullptr;  // the buffer: ends within 16 bytes of the trailing guard
    std::vector<unsigned char> initial;  // storage bytes for in/inout
    std::size_t bytes() const { return count * esize; }
    char *pages() const { return region + kGuard; }
    static std::size_t page_size() { return (std::size_t)sysconf(_SC_PAGESIZE); }
    // Inaccessible address space on each side: far strides out of bounds fault too (it costs no
    // memory, only addresses).
    static constexpr std::size_t kGuard = 1 << 20;
};

std::vector<Buffer> g_buffers;  // read by the fault handler
constexpr unsigned char kCanary = 0xff;

std::size_t dtype_size(const std::string &d) {
    if (d == "f32" || d == "u32" || d == "i32") return 4;
    if (d == "bf16" || d == "f16") return 2;
    throw CaseError("unknown dtype `" + d + "`");
}

bool is_float(const std::string &d) { return d == "f32" || d == "bf16" || d == "f16"; }

void map_buffer(Buffer &b) {
    const std::size_t page = Buffer::page_size();
    const std::size_t span = (b.bytes() + 15) / 16 * 16;
    b.data_pages_bytes = std::max<std::size_t>(page, (span + page - 1) / page * page);
    b.region_bytes = b.data_pages_bytes + 2 * Buffer::kGuard;
    void *p = mmap(nullptr, b.region_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw CaseError("cannot map buffer `" + b.name + "`");
    b.region = static_cast<char *>(p);
    mprotect(b.pages(), b.data_pages_bytes, PROT_READ | PROT_WRITE);
    b.data = b.pages() + b.data_pages_bytes - span;
}

// Writes the initial contents and the canary; read-only buffers are then protected.
void reset_buffer(Buffer &b) {
    mprotect(b.pages(), b.data_pages_bytes, PROT_READ | PROT_WRITE);
    std::memset(b.pages(), kCanary, b.data_pages_bytes);
    if (b.role != "out") std::memcpy(b.data, b.initial.data(), b.bytes());
    if (b.role == "in") mprotect(b.pages(), b.data_pages_bytes, PROT_READ);
}

// Index of the first canary byte that changed, or -1.
long canary_damage(const Buffer &b, long *offset) {
    const unsigned char *p = reinterpret_cast<const unsigned char *>(b.pages());
    const std::size_t start = (std::size_t)(b.data - b.pages()), end = start + b.bytes();
    for (std::size_t i = 0; i < b.data_pages_bytes; ++i) {
        if (i >= start && i < end) continue;
        if (p[i] != kCanary) {
            *offset = i < start ? -(long)(start - i) : (long)(i - end);
            return (long)i;
        }
    }
    return -1;
}

std::vector<unsigned char> read_file(const std::string &path, std::size_t bytes) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw CaseError("cannot read `" + path + "`");
    std::vector<unsigned char> v((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (v.size() != bytes)
        throw CaseError("`" + path + "` holds " + std::to_string(v.size()) + " bytes, expected " + std::to_string(bytes));
    return v;
}

// f32 file contents → storage bytes of dtype.
std::vector<unsigned char> to_storage(const std::vector<unsigned char> &raw, const Buffer &b) {
    if (!is_float(b.dtype) || b.dtype == "f32") return raw;
    std::vector<unsigned char> out(b.bytes());
    for (std::size_t i = 0; i < b.count; ++i) {
        float f;
        std::memcpy(&f, raw.data() + 4 * i, 4);
        const unsigned short bits =
            b.dtype == "bf16" ? __bfloat16_as_ushort(__float2bfloat16_rn(f)) : __half_as_ushort(__float2half_rn(f));
        std::memcpy(out.data() + 2 * i, &bits, 2);
    }
    return out;
}

float element_f32(const Buffer &b, std::size_t i) {
    if (b.dtype == "f32") {
        float f;
        std::memcpy(&f, b.data + 4 * i, 4);
        return f;
    }
    unsigned short bits;
    std::memcpy(&bits, b.data + 2 * i, 2);
    return b.dtype == "bf16" ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
}

void write_output(const Buffer &b, const std::string &path) {
    std::ofstream f(path, std::ios::binary);
    if (!f) throw CaseError("cannot write `" + path + "`");
    if (!is_float(b.dtype)) {
        f.write(b.data, (std::streamsize)b.bytes());
    } else {
        for (std::size_t i = 0; i < b.count; ++i) {
            const float v = element_f32(b, i);
            f.write(reinterpret_cast<const char *>(&v), 4);
        }
    }
    if (!f) throw CaseError("cannot write `" + path + "`");
}

// ---- faults ---------------------------------------------------------------------------------

char g_altstack[1 << 16];
unsigned g_timeout = 120;

void say(const char *s) {
    std::size_t n = std::strlen(s);
    while (n > 0) {
        const ssize_t w = write(2, s, n);
        if (w <= 0) return;
        s += w;
        n -= (std::size_t)w;
    }
}

void on_fault(int sig, siginfo_t *info, void *) {
    static char where[256], msg[768];
    emu::describe_current(where, sizeof where);
    const char *addr = static_cast<const char *>(info->si_addr);
    if (sig == SIGALRM) {
        std::snprintf(msg, sizeof msg, "emu: timeout after %u s in %s (an endless loop?)\n", g_timeout, where);
        say(msg);
        _exit(5);
    }
    if (sig == SIGFPE) {
        std::snprintf(msg, sizeof msg, "emu: arithmetic fault (integer division by zero?) in %s\n", where);
        say(msg);
        _exit(3);
    }
    msg[0] = 0;
    for (const Buffer &b : g_buffers) {
        if (addr < b.region || addr >= b.region + b.region_bytes) continue;
        const long esz = (long)b.esize;
        if (addr < b.data) {
            const long before = (long)(b.data - addr);
            std::snprintf(msg, sizeof msg,
                          "emu: out-of-bounds access %ld bytes before the start of buffer `%s` (element %ld of %zu "
                          "%s) in %s\n",
                          before, b.name.c_str(), -((before + esz - 1) / esz), b.count, b.dtype.c_str(), where);
        } else if (addr < b.data + b.bytes()) {
            std::snprintf(msg, sizeof msg,
                          "emu: write to input buffer `%s` (element %ld), which the kernel may only read, in %s\n",
                          b.name.c_str(), (long)(addr - b.data) / esz, where);
        } else {
            const long after = (long)(addr - (b.data + b.bytes()));
            std::snprintf(msg, sizeof msg,
                          "emu: out-of-bounds access %ld bytes past the end of buffer `%s` (element %ld of %zu %s) "
                          "in %s\n",
                          after, b.name.c_str(), (long)(addr - b.data) / esz, b.count, b.dtype.c_str(), where);
        }
        break;
    }
    if (!msg[0]) {
        if (emu::is_stack_guard(addr))
            std::snprintf(msg, sizeof msg, "emu: stack overflow (%zu KiB a thread) in %s\n", emu::kStackBytes / 1024,
                          where);
        else if ((std::uintptr_t)addr < 65536)
            std::snprintf(msg, sizeof msg, "emu: null pointer access (address %p: a null optional argument?) in %s\n",
                          (const void *)addr, where);
        else
            std::snprintf(msg, sizeof msg, "emu: invalid memory access at %p (inside no buffer) in %s\n",
                          (const void *)addr, where);
    }
    say(msg);
    _exit(3);
}

void install_handlers() {
    stack_t ss{};
    ss.ss_sp = g_altstack;
    ss.ss_size = sizeof g_altstack;
    sigaltstack(&ss, nullptr);
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGALRM}) sigaction(s, &sa, nullptr);
}

// ---- case files -----------------------------------------------------------------------------

struct Launch {
    std::string kernel;
    dim3 grid, block;
    std::vector<std::string> args;
    int line;
};

struct Case {
    std::vector<Launch> launches;
    std::vector<std::pair<std::string, std::string>> outputs;
    std::vector<emu::Order> orders{emu::Order::Forward};
};

Buffer &buffer(const std::string &name) {
    for (Buffer &b : g_buffers)
        if (b.name == name) return b;
    throw CaseError("no buffer named `" + name + "`");
}

unsigned parse_dim(const std::string &s) {
    char *end = nullptr;
    errno = 0;
    const unsigned long v = std::strtoul(s.c_str(), &end, 10);
    if (errno || *end || s.empty() || v > 0xffffffffUL) throw CaseError("bad dimension `" + s + "`");
    return (unsigned)v;
}

template <typename T>
void push_le(std::vector<unsigned char> &out, T v) {
    unsigned char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out.insert(out.end(), b, b + sizeof(T));
}

emu::Arg parse_arg(const std::string &s) {
    emu::Arg a;
    a.text = s;
    if (s == "null") {
        a.kind = emu::Arg::Null;
        return a;
    }
    const std::size_t colon = s.find(':');
    if (colon == std::string::npos) {
        Buffer &b = buffer(s);
        a.kind = emu::Arg::Buffer;
        a.ptr = b.data;
        a.dtype = b.dtype;
        return a;
    }
    const std::string type = s.substr(0, colon), val = s.substr(colon + 1);
    char *end = nullptr;
    errno = 0;
    auto done = [&](bool range_ok) {
        if (errno || !range_ok || val.empty() || *end) throw CaseError("bad argument `" + s + "`");
    };
    if (type == "bytes") {
        a.kind = emu::Arg::Bytes;
        if (val.size() % 2) throw CaseError("bad argument `" + s + "`");
        for (std::size_t i = 0; i < val.size(); i += 2)
            a.bytes.push_back((unsigned char)std::stoul(val.substr(i, 2), nullptr, 16));
        return a;
    }
    if (type == "i64s") {
        a.kind = emu::Arg::Bytes;
        std::stringstream ss(val);
        std::string item;
        while (std::getline(ss, item, ',')) {
            errno = 0;
            const long long v = std::strtoll(item.c_str(), &end, 10);
            if (errno || item.empty() || *end) throw CaseError("bad argument `" + s + "`");
            push_le<long long>(a.bytes, v);
        }
        return a;
    }
    a.kind = emu::Arg::Scalar;
    a.scalar = type;
    if (type == "i32") {
        const long long v = std::strtoll(val.c_str(), &end, 10);
        done(v >= INT32_MIN && v <= INT32_MAX);
        push_le<int32_t>(a.bytes, (int32_t)v);
    } else if (type == "u32") {
        const unsigned long long v = std::strtoull(val.c_str(), &end, 10);
        done(v <= UINT32_MAX && val[0] != '-');
        push_le<uint32_t>(a.bytes, (uint32_t)v);
    } else if (type == "i64") {
        const long long v = std::strtoll(val.c_str(), &end, 10);
        done(true);
        push_le<int64_t>(a.bytes, v);
    } else if (type == "u64") {
        const unsigned long long v = std::strtoull(val.c_str(), &end, 10);
        done(val[0] != '-');
        push_le<uint64_t>(a.bytes, v);
    } else if (type == "f32") {
        const float v = std::strtof(val.c_str(), &end);  // correctly rounded: exact for Rust's f32 Display
        done(true);
        push_le<float>(a.bytes, v);
    } else if (type == "f64") {
        const double v = std::strtod(val.c_str(), &end);
        done(true);
        push_le<double>(a.bytes, v);
    } else {
        throw CaseError("unknown argument type in `" + s + "`");
    }
    return a;
}

Case parse_case(const std::string &path) {
    std::ifstream f(path);
    if (!f) throw CaseError("cannot read case file `" + path + "`");
    const std::size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
    Case c;
    std::string line;
    int lineno = 0;
    while (std::getline(f, line)) {
        ++lineno;
        const std::size_t hash = line.find('#');
        if (hash != std::string::npos) line.resize(hash);
        std::stringstream ss(line);
        std::vector<std::string> w;
        for (std::string t; ss >> t;) w.push_back(t);
        if (w.empty()) continue;
        const std::string where = path + ":" + std::to_string(lineno) + ": ";
        try {
            if (w[0] == "buffer") {
                if (w.size() < 5 || w.size() > 6) throw CaseError("expected `buffer NAME DTYPE COUNT ROLE [FILE]`");
                Buffer b;
                b.name = w[1];
                b.dtype = w[2];
                b.esize = dtype_size(b.dtype);
                b.count = parse_dim(w[3]);
                b.role = w[4];
                if (b.role != "in" && b.role != "inout" && b.role != "out") throw CaseError("role must be in, inout or out");
                if ((b.role == "out") != (w.size() == 5)) throw CaseError("in and inout buffers need a FILE, out none");
                for (const Buffer &o : g_buffers)
                    if (o.name == b.name) throw CaseError("buffer `" + b.name + "` declared twice");
                if (b.role != "out") b.initial = to_storage(read_file(dir + "/" + w[5], b.count * 4), b);
                map_buffer(b);
                g_buffers.push_back(std::move(b));
            } else if (w[0] == "launch") {
                if (w.size() < 8) throw CaseError("expected `launch KERNEL GX GY GZ BX BY BZ ARG...`");
                Launch l;
                l.kernel = w[1];
                l.grid = dim3(parse_dim(w[2]), parse_dim(w[3]), parse_dim(w[4]));
                l.block = dim3(parse_dim(w[5]), parse_dim(w[6]), parse_dim(w[7]));
                l.args.assign(w.begin() + 8, w.end());
                l.line = lineno;
                c.launches.push_back(std::move(l));
            } else if (w[0] == "output") {
                if (w.size() != 3) throw CaseError("expected `output NAME FILE`");
                buffer(w[1]);
                c.outputs.emplace_back(w[1], dir + "/" + w[2]);
            } else if (w[0] == "orders") {
                c.orders.clear();
                for (std::size_t i = 1; i < w.size(); ++i) {
                    if (w[i] == "forward") c.orders.push_back(emu::Order::Forward);
                    else if (w[i] == "reverse") c.orders.push_back(emu::Order::Reverse);
                    else throw CaseError("unknown order `" + w[i] + "`");
                }
                if (c.orders.empty()) throw CaseError("`orders` needs at least one order");
            } else if (w[0] == "timeout") {
                if (w.size() != 2) throw CaseError("expected `timeout SECONDS`");
                g_timeout = parse_dim(w[1]);
            } else {
                throw CaseError("unknown directive `" + w[0] + "`");
            }
        } catch (const CaseError &e) {
            throw CaseError(where + e.what());
        }
    }
    return c;
}

void run_launches(const Case &c) {
    for (const Launch &l : c.launches) {
        const emu::KernelInfo *k = emu::find_kernel(l.kernel);
        if (!k) throw emu::Error("no kernel named `" + l.kernel + "` (driver --list shows the registered ones)");
        const unsigned threads = l.block.x * l.block.y * l.block.z;
        if (k->max_threads && threads > k->max_threads)
            throw emu::Error("launch of `" + l.kernel + "` with " + std::to_string(threads) +
                             " threads a block exceeds its __launch_bounds__(" + std::to_string(k->max_threads) +
                             "): the CUDA driver refuses such a launch");
        std::vector<emu::Arg> args;
        for (const std::string &s : l.args) args.push_back(parse_arg(s));
        const emu::Body body = k->bind(k->fn, args, k->name);
        emu::launch(k->name, l.grid, l.block, body);
        for (const Buffer &b : g_buffers) {
            long off = 0;
            if (canary_damage(b, &off) >= 0)
                throw emu::Error("after `" + l.kernel + "`: bytes " +
                                 (off < 0 ? std::to_string(-off) + " before the start" : std::to_string(off) + " past the end") +
                                 " of buffer `" + b.name + "` were overwritten (an out-of-bounds write)");
        }
    }
}

const char *order_name(emu::Order o) { return o == emu::Order::Forward ? "forward" : "reverse"; }

int run(const std::string &path) {
    const Case c = parse_case(path);
    std::vector<std::vector<unsigned char>> first(g_buffers.size());  // the first order's results
    for (std::size_t oi = 0; oi < c.orders.size(); ++oi) {
        for (Buffer &b : g_buffers) reset_buffer(b);
        emu::set_order(c.orders[oi]);
        alarm(g_timeout);
        run_launches(c);
        alarm(0);
        for (std::size_t bi = 0; bi < g_buffers.size(); ++bi) {
            const Buffer &b = g_buffers[bi];
            if (b.role == "in") continue;
            std::vector<unsigned char> now(b.data, b.data + b.bytes());
            if (oi == 0) {
                first[bi] = std::move(now);
                continue;
            }
            if (now == first[bi]) continue;
            std::size_t i = 0;
            while (std::memcmp(now.data() + i * b.esize, first[bi].data() + i * b.esize, b.esize) == 0) ++i;
            std::fprintf(stderr,
                         "emu: buffer `%s` differs between the %s and %s schedules, first at element %zu: the "
                         "result depends on the order in which threads or blocks run (a race the barriers do not "
                         "order, or a read of memory no thread wrote)\n",
                         b.name.c_str(), order_name(c.orders[0]), order_name(c.orders[oi]), i);
            return 4;
        }
    }
    // The buffers now hold the last order's results; every order agreed.
    for (const auto &[name, file] : c.outputs) write_output(buffer(name), file);
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc == 2 && std::string(argv[1]) == "--list") {
        for (const emu::KernelInfo &k : emu::kernels()) std::printf("%s %s %u\n", k.name, k.file, k.max_threads);
        return 0;
    }
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CASEFILE | --list\n", argv[0]);
        return 1;
    }
    install_handlers();
    try {
        return run(argv[1]);
    } catch (const CaseError &e) {
        std::fprintf(stderr, "emu: %s\n", e.what());
        return 1;
    } catch (const emu::Error &e) {
        std::fprintf(stderr, "emu: %s\n", e.what());
        return 2;
    }
}
