// The emulator's scheduler: every thread of a block is a ucontext fiber with its own stack, run
// cooperatively and deterministically on one OS thread; blocks run one after another.
//
// A fiber runs until it reaches a barrier, then hands over to the next ready fiber (FIFO). A
// barrier belongs to a group, the block (__syncthreads) or one warp (shuffles, votes, mma); it
// completes when every member of its group has arrived at the same call site, and the last
// arrival releases the others and carries on. Whatever can never complete is an error, raised as
// soon as it is certain: members waiting at different sites, a member that exits while others
// wait (or that had exited before one arrives), and, as the catch-all, no fiber left to run while
// some still wait.
//
// Warp collectives exchange values through per-warp slots in two phases, as the hardware's
// register exchange behaves: each lane deposits its value and waits for the whole warp (phase 1),
// reads the slot it wants, and waits again (phase 2) so that no lane overwrites a slot for its
// next collective before every lane has read this one.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "launch.h"

namespace emu {
namespace rt {

Coords coords;

namespace {

constexpr int kMaxThreads = 1024;

enum class St : unsigned char { Ready, Waiting, Exited };

// A barrier's identity: the intrinsic, its phase, the shuffle width and the call site.
struct Site {
    const char *what = nullptr;
    int phase = 0;
    int width = 0;
    const char *file = nullptr;
    long line = 0;
};

bool same_site(const Site &a, const Site &b) {
    return a.what == b.what && a.phase == b.phase && a.width == b.width && a.line == b.line &&
           (a.file == b.file || (a.file && b.file && std::strcmp(a.file, b.file) == 0));
}

std::string site_str(const Site &s) {
    std::string r = s.what;
    if (s.file) {
        r += " at ";
        r += s.file;
        r += ":" + std::to_string(s.line);
    } else if (s.line) {
        char buf[48];
        std::snprintf(buf, sizeof buf, " (call site %#lx)", (unsigned long)s.line);
        r += buf;
    }
    if (s.phase == 2) r += " (second phase)";
    return r;
}

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    int lin;
    St st;
};

struct Group {
    int members = 0;  // threads that exist in the group
    int arrived = 0;
    int exited = 0;
    Site site;
    std::vector<int> waiters;
};

struct Warp : Group {
    uint64_t slot[32];
    uint32_t a[32][4], b[32][2];
    float c[32][4];
    int bf16[32];
};

struct State {
    const char *kernel = nullptr;
    dim3 grid, block;
    uint3 bidx{};
    int nthreads = 0;
    std::vector<Fiber> fibers;
    Group blk;
    std::vector<Warp> warps;
    std::vector<int> ring;  // FIFO of ready fibers (each is queued at most once)
    int head = 0, count = 0;
    ucontext_t sched;
    Fiber *cur = nullptr;
    int exited = 0;
    bool failed = false;
    std::string error;
    const std::function<void()> *body = nullptr;
    char *stacks = nullptr;
    std::size_t stack_stride = 0;
    Order order = Order::Forward;
    bool active = false;
};

State S;

void push(int f) {
    S.ring[(S.head + S.count) % kMaxThreads] = f;
    ++S.count;
}

int pop() {
    if (S.count == 0) return -1;
    const int f = S.ring[S.head];
    S.head = (S.head + 1) % kMaxThreads;
    --S.count;
    return f;
}

// "threads 0-31, 64" for linear thread indices (x + y·bx + z·bx·by).
std::string ranges(std::vector<int> ids) {
    std::sort(ids.begin(), ids.end());
    std::string r;
    for (std::size_t i = 0; i < ids.size();) {
        std::size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
        if (!r.empty()) r += ", ";
        r += std::to_string(ids[i]);
        if (j > i) r += "-" + std::to_string(ids[j]);
        i = j + 1;
    }
    return r.empty() ? "none" : r;
}

// "thread 3 waits" / "threads 0-39 wait".
std::string who(const std::vector<int> &ids, const char *verb) {
    return (ids.size() == 1 ? "thread " : "threads ") + ranges(ids) + " " + verb + (ids.size() == 1 ? "s" : "");
}

std::string where() {
    char buf[160];
    std::snprintf(buf, sizeof buf, "kernel `%s`, block (%u,%u,%u) of grid (%u,%u,%u), block dim (%u,%u,%u)",
                  S.kernel, S.bidx.x, S.bidx.y, S.bidx.z, S.grid.x, S.grid.y, S.grid.z, S.block.x, S.block.y,
                  S.block.z);
    return buf;
}

Warp &warp_of(const Fiber *f) { return S.warps[f->lin >> 5]; }

std::vector<int> exited_in(int first, int n) {
    std::vector<int> r;
    for (int i = first; i < first + n && i < S.nthreads; ++i)
        if (S.fibers[i].st == St::Exited) r.push_back(i);
    return r;
}

// Runs on a fiber: records the error and returns to the scheduler, abandoning every fiber of the
// block (their stacks are simply reused by the next launch).
[[noreturn]] void fail(const std::string &msg) {
    S.failed = true;
    S.error = where() + ": " + msg;
    setcontext(&S.sched);
    std::abort();
}

// Leaves the running fiber (already marked Waiting or Exited) for the next ready one, or for the
// scheduler when none is ready; returns when some barrier releases this fiber.
void switch_away(Fiber *self) {
    const int n = pop();
    ucontext_t *to = &S.sched;
    S.cur = nullptr;
    if (n >= 0) {
        S.cur = &S.fibers[n];
        coords.thread_idx = S.cur->tid;
        to = &S.cur->ctx;
    }
    if (self->st == St::Exited) {
        setcontext(to);
        std::abort();
    }
    swapcontext(&self->ctx, to);
}

const char *group_name(const Group &g, std::string &buf) {
    if (&g == &S.blk) return "the block";
    const int w = (int)(static_cast<const Warp *>(&g) - S.warps.data());
    buf = "warp " + std::to_string(w) + " (threads " + std::to_string(w * 32) + "-" +
          std::to_string(w * 32 + g.members - 1) + ")";
    return buf.c_str();
}

void arrive(Group &g, const Site &s) {
    Fiber *self = S.cur;
    std::string gname;
    if (g.exited > 0) {
        const int first = &g == &S.blk ? 0 : (self->lin & ~31);
        const std::vector<int> gone = exited_in(first, &g == &S.blk ? S.nthreads : 32);
        fail("thread " + std::to_string(self->lin) + " reached " + site_str(s) + ", which waits for all of " +
             group_name(g, gname) + ", but " + (gone.size() == 1 ? "thread " : "threads ") + ranges(gone) +
             (gone.size() == 1 ? " has" : " have") + " exited: it can never complete");
    }
    if (g.arrived == 0) {
        g.site = s;
    } else if (!same_site(g.site, s)) {
        fail("divergent barriers in " + std::string(group_name(g, gname)) + ": " + who(g.waiters, "wait") + " at " +
             site_str(g.site) + " while thread " + std::to_string(self->lin) + " reached " + site_str(s) +
             "; they can never meet");
    }
    if (++g.arrived == g.members) {
        g.arrived = 0;
        for (int w : g.waiters) {
            S.fibers[w].st = St::Ready;
            push(w);
        }
        g.waiters.clear();
        return;
    }
    self->st = St::Waiting;
    g.waiters.push_back(self->lin);
    switch_away(self);
}

void exit_fiber(Fiber *self) {
    self->st = St::Exited;
    ++S.exited;
    Warp &w = warp_of(self);
    std::string gname;
    for (Group *g : {static_cast<Group *>(&S.blk), static_cast<Group *>(&w)}) {
        ++g->exited;
        if (g->arrived > 0)
            fail("thread " + std::to_string(self->lin) + " exited while " + who(g->waiters, "wait") + " at " +
                 site_str(g->site) + " for all of " + group_name(*g, gname) + ": it can never complete");
    }
    switch_away(self);
}

void trampoline() {
    Fiber *self = S.cur;
    std::string thrown;
    try {
        (*S.body)();
    } catch (const std::exception &e) {
        thrown = std::string("the kernel threw: ") + e.what();
    } catch (...) {
        thrown = "the kernel threw a non-standard exception";
    }
    // Outside the handler: fail() never returns, and must not leave an exception being handled.
    if (!thrown.empty()) fail(thrown);
    exit_fiber(self);
}

void alloc_stacks() {
    if (S.stacks) return;
    const std::size_t page = (std::size_t)sysconf(_SC_PAGESIZE);
    S.stack_stride = kStackBytes + page;
    void *p = mmap(nullptr, S.stack_stride * kMaxThreads, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw Error("cannot map the emulated threads' stacks");
    S.stacks = static_cast<char *>(p);
    // A guard page below each stack (stacks grow down) turns an overflow into a fault.
    for (int i = 0; i < kMaxThreads; ++i) mprotect(S.stacks + i * S.stack_stride, page, PROT_NONE);
    S.ring.assign(kMaxThreads, 0);
    S.fibers.resize(kMaxThreads);
    S.warps.resize(kMaxThreads / 32);
}

std::string stall_report() {
    std::string r = "deadlock: no thread can run.";
    std::string gname;
    auto describe = [&](const Group &g) {
        if (g.waiters.empty()) return;
        std::string w = who(g.waiters, "wait");
        w[0] = 'T';
        r += " " + w + " at " + site_str(g.site) + " for all of " + group_name(g, gname) + ".";
    };
    describe(S.blk);
    for (int w = 0; w * 32 < S.nthreads; ++w) describe(S.warps[w]);
    std::vector<int> gone;
    for (int i = 0; i < S.nthreads; ++i)
        if (S.fibers[i].st == St::Exited) gone.push_back(i);
    if (!gone.empty()) r += " Exited: threads " + ranges(gone) + ".";
    return r;
}

void run_block() {
    const int n = S.nthreads;
    S.blk = Group();
    S.blk.members = n;
    for (int w = 0; w * 32 < n; ++w) {
        Warp &wp = S.warps[w];
        static_cast<Group &>(wp) = Group();
        wp.members = std::min(32, n - w * 32);
    }
    S.head = S.count = 0;
    S.exited = 0;
    const dim3 bd = S.block;
    for (int i = 0; i < n; ++i) {
        Fiber &f = S.fibers[i];
        f.lin = i;
        f.tid = uint3{(unsigned)i % bd.x, ((unsigned)i / bd.x) % bd.y, (unsigned)i / (bd.x * bd.y)};
        f.st = St::Ready;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = S.stacks + i * S.stack_stride + (S.stack_stride - kStackBytes);
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = &S.sched;
        makecontext(&f.ctx, trampoline, 0);
        push(S.order == Order::Forward ? i : n - 1 - i);
    }
    for (;;) {
        const int next = pop();
        if (next < 0) break;
        S.cur = &S.fibers[next];
        coords.thread_idx = S.cur->tid;
        swapcontext(&S.sched, &S.cur->ctx);
        if (S.failed) break;
    }
    S.cur = nullptr;
    if (!S.failed && S.exited < n) {
        S.failed = true;
        S.error = where() + ": " + stall_report();
    }
}

void check_mask(unsigned mask, const Fiber *self, const Site &s) {
    const int lanes = warp_of(self).members;
    const unsigned existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
    if ((mask & existing) != existing) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%#010x", mask);
        fail(site_str(s) + " with mask " + buf +
             ": the emulator supports only collectives over every existing lane of the warp (full mask)");
    }
}

}  // namespace

void syncthreads(const char *file, int line) {
    Site s;
    s.what = "__syncthreads()";
    s.file = file;
    s.line = line;
    arrive(S.blk, s);
}

uint64_t shfl(ShflOp op, unsigned mask, uint64_t value, int arg, int width, const char *file, int line) {
    static const char *names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
    Fiber *self = S.cur;
    Site s;
    s.what = names[op];
    s.phase = 1;
    s.width = width;
    s.file = file;
    s.line = line;
    check_mask(mask, self, s);
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fail(site_str(s) + ": width " + std::to_string(width) + " is not a power of two in 1..32");
    Warp &w = warp_of(self);
    const int lane = self->lin & 31;
    w.slot[lane] = value;
    arrive(w, s);
    const int seg = lane & ~(width - 1), in_seg = lane & (width - 1);
    int src = lane;
    switch (op) {
        case SHFL_IDX: src = seg + (arg & (width - 1)); break;
        case SHFL_UP: src = (unsigned)in_seg >= (unsigned)arg ? lane - arg : lane; break;
        case SHFL_DOWN: src = (unsigned)in_seg + (unsigned)arg < (unsigned)width ? lane + arg : lane; break;
        case SHFL_XOR: {
            const int j = lane ^ (arg & 31);
            src = j <= (seg | (width - 1)) ? j : lane;
            break;
        }
    }
    if (src >= w.members)
        fail(site_str(s) + ": lane " + std::to_string(lane) + " of warp " + std::to_string(self->lin >> 5) +
             " reads lane " + std::to_string(src) + ", which does not exist (the block has " +
             std::to_string(S.nthreads) + " threads, so this warp has " + std::to_string(w.members) +
             " lanes); on the GPU the value read is undefined");
    const uint64_t r = w.slot[src];
    s.phase = 2;
    arrive(w, s);
    return r;
}

unsigned vote(VoteOp op, unsigned mask, int pred, const char *file, int line) {
    static const char *names[] = {"__ballot_sync", "__any_sync", "__all_sync", "__syncwarp"};
    Fiber *self = S.cur;
    Site s;
    s.what = names[op];
    s.phase = 1;
    s.file = file;
    s.line = line;
    check_mask(mask, self, s);
    Warp &w = warp_of(self);
    w.slot[self->lin & 31] = pred != 0;
    arrive(w, s);
    if (op == VOTE_SYNCWARP) return 0;  // one barrier; no slot is read
    unsigned ballot = 0;
    for (int l = 0; l < w.members; ++l) ballot |= (unsigned)(w.slot[l] != 0) << l;
    const unsigned existing = w.members == 32 ? 0xffffffffu : (1u << w.members) - 1u;
    s.phase = 2;
    arrive(w, s);
    switch (op) {
        case VOTE_BALLOT: return ballot;
        case VOTE_ANY: return ballot != 0;
        case VOTE_ALL: return ballot == existing;
        default: return 0;
    }
}

unsigned activemask() {
    const Fiber *self = S.cur;
    const int first = self->lin & ~31;
    unsigned m = 0;
    for (int l = 0; l < warp_of(self).members; ++l)
        if (S.fibers[first + l].st != St::Exited) m |= 1u << l;
    return m;
}

}  // namespace rt

void set_order(Order order) { rt::S.order = order; }

void launch(const char *name, dim3 grid, dim3 block, std::function<void()> body) {
    using namespace rt;
    if (S.active) throw Error("emu::launch is not reentrant");
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
        threads > 1024)
        throw Error(std::string("launch of `") + name + "`: invalid block (" + std::to_string(block.x) + "," +
                    std::to_string(block.y) + "," + std::to_string(block.z) +
                    "): each dimension ≥ 1, x, y ≤ 1024, z ≤ 64, at most 1024 threads");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        throw Error(std::string("launch of `") + name + "`: invalid grid (" + std::to_string(grid.x) + "," +
                    std::to_string(grid.y) + "," + std::to_string(grid.z) +
                    "): x in 1..2^31-1, y and z in 1..65535");
    alloc_stacks();
    S.kernel = name;
    S.grid = grid;
    S.block = block;
    S.nthreads = (int)threads;
    S.body = &body;
    S.failed = false;
    S.active = true;
    coords.block_dim = block;
    coords.grid_dim = grid;
    const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    for (unsigned long long i = 0; i < nblocks && !S.failed; ++i) {
        const unsigned long long b = S.order == Order::Forward ? i : nblocks - 1 - i;
        S.bidx = uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
        coords.block_idx = S.bidx;
        run_block();
    }
    S.active = false;
    S.body = nullptr;
    if (S.failed) throw Error(S.error);
}

void describe_current(char *buf, std::size_t n) {
    using namespace rt;
    if (!S.active) {
        std::snprintf(buf, n, "outside any kernel");
    } else if (!S.cur) {
        std::snprintf(buf, n, "kernel `%s`, block (%u,%u,%u), between threads", S.kernel, S.bidx.x, S.bidx.y,
                      S.bidx.z);
    } else {
        std::snprintf(buf, n, "kernel `%s`, block (%u,%u,%u), thread (%u,%u,%u)", S.kernel, S.bidx.x, S.bidx.y,
                      S.bidx.z, S.cur->tid.x, S.cur->tid.y, S.cur->tid.z);
    }
}

bool is_stack_guard(const void *addr) {
    using namespace rt;
    if (!S.stacks) return false;
    const char *p = static_cast<const char *>(addr);
    if (p < S.stacks || p >= S.stacks + S.stack_stride * kMaxThreads) return false;
    return (std::size_t)(p - S.stacks) % S.stack_stride < S.stack_stride - kStackBytes;
}

}  // namespace emu

// ---- tensor cores ---------------------------------------------------------------------------

namespace {
float half_bits(uint32_t reg, int hi, int is_bf16) {
    const unsigned short bits = (unsigned short)(hi ? reg >> 16 : reg & 0xffffu);
    return is_bf16 ? (float)__ushort_as_bfloat16(bits) : (float)__ushort_as_half(bits);
}
}  // namespace

extern "C" void ecad_emu_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                                   int is_bf16) {
    using namespace emu::rt;
    Fiber *self = S.cur;
    if (!self) throw emu::Error("ecad_emu_mma_16816 called outside a kernel");
    Site s;
    s.what = "ecad_emu_mma_16816";
    s.phase = 1;
    // The call site identifies the instruction (the PTX is .aligned: every lane must execute the
    // same mma); the return address stands in for file:line, which the fixed signature lacks.
    s.line = (long)(uintptr_t)__builtin_return_address(0);
    Warp &w = warp_of(self);
    if (w.members != 32)
        fail(site_str(s) + " in a warp of " + std::to_string(w.members) + " threads: mma needs all 32 lanes");
    const int lane = self->lin & 31;
    for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i], w.c[lane][i] = c[i];
    w.b[lane][0] = b[0];
    w.b[lane][1] = b[1];
    w.bf16[lane] = is_bf16 != 0;
    arrive(w, s);
    for (int l = 0; l < 32; ++l)
        if (w.bf16[l] != w.bf16[lane])
            fail(site_str(s) + ": lanes disagree on is_bf16 (lane " + std::to_string(l) + " vs lane " +
                 std::to_string(lane) + ")");
    // A[r][k] sits in lane (r mod 8)·4 + (k mod 8)/2, register (r ≥ 8) + 2·(k ≥ 8), half k mod 2;
    // B[k][n] in lane 4n + (k mod 8)/2, register (k ≥ 8), half k mod 2;
    // C[r][n] in lane (r mod 8)·4 + n/2, element 2·(r ≥ 8) + n mod 2.
    const int g = lane >> 2, t = lane & 3;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int r = g + 8 * (i >> 1), n = 2 * t + (i & 1);
        float acc = w.c[(r & 7) * 4 + n / 2][2 * (r >> 3) + (n & 1)];
        for (int k = 0; k < 16; ++k) {
            const float av = half_bits(w.a[(r & 7) * 4 + (k & 7) / 2][(r >> 3) + 2 * (k >> 3)], k & 1, is_bf16);
            const float bv = half_bits(w.b[4 * n + (k & 7) / 2][k >> 3], k & 1, is_bf16);
            acc += av * bv;  // exact product (≤ 22 significant bits), f32 accumulation
        }
        out[i] = acc;
    }
    s.phase = 2;
    arrive(w, s);
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}
