// bngraph's CUDA execution model on the CPU: the runtime library (threads.py compiles it once per
// sanitizer mode and loads it before any kernel module, which calls into it).
//
// A launch runs every block of its grid, in a seeded shuffled order, on a few worker OS threads
// (blocks run concurrently, so atomics across blocks are real). A block runs on one worker as one
// fiber (ucontext) per CUDA thread: the worker's scheduler resumes the block's runnable threads in
// a new random order each round; a thread runs until it reaches __syncthreads, yields after an
// atomic (at random), or exits. __syncthreads is a real barrier: it releases when every thread of
// the block waits at it, and it is an error (barrier divergence) when some of them have exited or
// wait at another __syncthreads. __shared__ arrays are allocated per block, poisoned (all bits set)
// and checked for writes past their end when the block ends.
//
// Sanitizers: under AddressSanitizer the fiber switches are announced
// (__sanitizer_start/finish_switch_fiber); under ThreadSanitizer each CUDA thread is a TSan fiber,
// switched to without synchronisation, a barrier is a release by every arriving thread and an
// acquire by every released one, and the launch orders everything before and after it: so a race
// between two threads of a block (or two blocks) in one barrier interval is reported whatever the
// schedule. The scheduler's own bookkeeping is hidden from TSan (__tsan_ignore_thread_begin).
#include <pthread.h>
#include <ucontext.h>
#include <sys/mman.h>
#include <xmmintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

struct bngraph_dim3 { unsigned x, y, z; };
extern "C" {
struct bngraph_launch_config {
    unsigned grid[3], block[3];
    unsigned long long seed;
    int workers, yield_per_mille, ftz;
};
thread_local bngraph_dim3 bngraph_threadIdx, bngraph_blockIdx, bngraph_blockDim, bngraph_gridDim;
}

#if defined(__SANITIZE_ADDRESS__)
extern "C" void __asan_set_error_report_callback(void (*callback)(const char*));
extern "C" void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
extern "C" void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
#define STACK_BYTES (512u << 10)
#elif defined(__SANITIZE_THREAD__)
extern "C" void* __tsan_get_current_fiber(void);
extern "C" void* __tsan_create_fiber(unsigned flags);
extern "C" void __tsan_switch_to_fiber(void* fiber, unsigned flags);
extern "C" void __tsan_destroy_fiber(void* fiber);
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
extern "C" void __tsan_ignore_thread_begin(void);
extern "C" void __tsan_ignore_thread_end(void);
#define STACK_BYTES (256u << 10)
#else
#define STACK_BYTES (128u << 10)
#endif

namespace {

#if defined(__SANITIZE_THREAD__)
inline void acquire(void* a) { __tsan_acquire(a); }
inline void release(void* a) { __tsan_release(a); }
struct Hidden {  // the model's bookkeeping inside a CUDA thread: not the kernel's accesses
    Hidden() { __tsan_ignore_thread_begin(); }
    ~Hidden() { __tsan_ignore_thread_end(); }
};
#else
inline void acquire(void*) {}
inline void release(void*) {}
struct Hidden {};
#endif

const size_t SHARED_LIMIT = 48 << 10;  // static __shared__ bytes a block may declare
#if defined(__SANITIZE_ADDRESS__)
const size_t SHARED_MARGIN = 0;  // AddressSanitizer's own redzones around each array
#else
const size_t SHARED_MARGIN = 64;  // poisoned bytes after each __shared__ array, checked at the block's end
#endif

enum class State { Ready, Barrier, Exited };

struct Fiber {
    ucontext_t ctx;
    bngraph_dim3 idx;
    State state = State::Ready;
    int line = 0, site = 0, vote = 0;
    char* stack = nullptr;
    void* tsan = nullptr;
    void* fake = nullptr;
    bool abandoned = false;
};

struct Shared {
    void* site;
    char* mem;
    size_t bytes;
    const char* name;
};

struct Launch {
    const bngraph_launch_config* cfg;
    const char* name;
    void (*body)(void**);
    void** args;
    std::vector<unsigned> order;  // block linear indices, shuffled
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::string error;
    char start_sync = 0, done_sync = 0;  // ThreadSanitizer: the launch's happens-before edges

    void fail(const std::string& what) {
        std::lock_guard<std::mutex> lock(mu);
        if (!failed.exchange(true)) error = what;
    }
};

struct Worker {
    ucontext_t sched;
    std::vector<Fiber*> fibers;  // never moved: a parked thread's context and frames point into its Fiber
    Fiber* cur = nullptr;
    Launch* launch = nullptr;
    std::vector<Shared> shared;
    size_t shared_bytes = 0;
    char* sync = nullptr;  // this block's two barrier sync objects (ThreadSanitizer), fresh per block
    int parity = 0, vote_result = 0;
    std::mt19937_64 rng;
    std::string error;  // what a thread of this block did wrong
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
    void* tsan_sched = nullptr;
    unsigned csr = 0;  // the worker's own MXCSR (denormals kept)
};

thread_local Worker* tl_worker = nullptr;
thread_local std::string tl_error;

// AddressSanitizer's reports, as it makes them (its own output goes to stderr): the launcher takes
// them after every launch (bngraph_take_reports)
std::mutex reports_mutex;
std::string reports;
#if defined(__SANITIZE_ADDRESS__)
void on_report(const char* text) {
    std::lock_guard<std::mutex> lock(reports_mutex);
    reports += text;
}
__attribute__((constructor)) void install_report_callback() { __asan_set_error_report_callback(on_report); }
#endif

std::string where(const Worker* w) {
    char b[96];
    std::snprintf(b, sizeof b, "block (%u,%u,%u)", bngraph_blockIdx.x, bngraph_blockIdx.y, bngraph_blockIdx.z);
    return std::string(w->launch->name) + ", " + b;
}

// ---- switching between the scheduler and a thread ---------------------------------------------
void switch_to(Worker* w, Fiber* f) {
    w->cur = f;
    bngraph_threadIdx = f->idx;
#if defined(__SANITIZE_ADDRESS__)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f->stack, STACK_BYTES);
#elif defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(f->tsan, 1);  // 1: no synchronisation (the threads of a block are concurrent)
#endif
    swapcontext(&w->sched, &f->ctx);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    w->cur = nullptr;
}

void switch_out(Worker* w, Fiber* f) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(&f->fake, w->sched_bottom, w->sched_size);
#elif defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(w->tsan_sched, 1);
#endif
    swapcontext(&f->ctx, &w->sched);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(f->fake, &w->sched_bottom, &w->sched_size);
#endif
}

// A thread broke a rule: its block stops here (the fiber is abandoned, the launch fails).
[[noreturn]] void fault(Worker* w, const std::string& what) {
    Fiber* f;
    {
        Hidden h;
        f = w->cur;
        if (w->error.empty()) w->error = what;
        f->state = State::Exited;
        f->abandoned = true;
    }
    switch_out(w, f);
    std::abort();  // never resumed: an abandoned thread starts afresh
}

// A CUDA thread's fiber: it runs the kernel once per block it is given, then waits to be resumed
// for the next block (a fresh context only when it is new or was abandoned mid-kernel).
void fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
    {
        Worker* w = tl_worker;
        __sanitizer_finish_switch_fiber(nullptr, &w->sched_bottom, &w->sched_size);
    }
#endif
    for (;;) {
        Worker* w;
        Fiber* f;
        Launch* L;
        void (*body)(void**);
        void** args;
        int ftz;
        {
            Hidden h;
            w = tl_worker;
            f = w->cur;
            L = w->launch;
            body = L->body;
            args = L->args;
            ftz = L->cfg->ftz;
        }
        _mm_setcsr(ftz ? (w->csr | 0x8040u) : w->csr);  // float denormals flushed (FTZ|DAZ) or not
        acquire(&L->start_sync);
        body(args);
        release(&L->done_sync);
        {
            Hidden h;
            f->state = State::Exited;
        }
        switch_out(w, f);
    }
}

// ---- one block --------------------------------------------------------------------------------
void start_fibers(Worker* w, unsigned n, const unsigned* block) {
    while (w->fibers.size() < n) w->fibers.push_back(new Fiber);
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = *w->fibers[i];
        const bool fresh = f.stack == nullptr || f.abandoned;
        if (f.stack == nullptr) {
            void* p = mmap(nullptr, STACK_BYTES + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) {
                std::fprintf(stderr, "bngraph execution model: no memory for a thread's stack\n");
                std::abort();
            }
            mprotect(p, 4096, PROT_NONE);  // a guard page below the stack
            f.stack = static_cast<char*>(p) + 4096;
        } else if (f.abandoned) {  // it stopped inside the kernel: start it afresh
#if defined(__SANITIZE_ADDRESS__)
            __asan_unpoison_memory_region(f.stack, STACK_BYTES);  // the frames it never left
#elif defined(__SANITIZE_THREAD__)
            __tsan_destroy_fiber(f.tsan);
#endif
        }
        f.abandoned = false;
        f.idx = {i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
        f.state = State::Ready;
        if (fresh) {
#if defined(__SANITIZE_THREAD__)
            f.tsan = __tsan_create_fiber(0);
#endif
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack;
            f.ctx.uc_stack.ss_size = STACK_BYTES;
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, fiber_main, 0);
        }
    }
}

// Every live thread waits at a barrier: release them, or say why the barrier is broken.
bool release_barrier(Worker* w, unsigned n) {
    unsigned waiting = 0, exited = 0, votes = 0;
    int line = -1, site = -1, other = -1;
    for (unsigned i = 0; i < n; ++i) {
        const Fiber& f = *w->fibers[i];
        if (f.state == State::Exited) {
            ++exited;
        } else {
            ++waiting;
            votes += f.vote != 0;
            if (site < 0) {
                site = f.site;
                line = f.line;
            } else if (f.site != site) {
                other = f.line;
            }
        }
    }
    char b[256];
    if (other >= 0) {
        std::snprintf(b, sizeof b, ": barrier divergence: threads wait at different __syncthreads() (lines %d and %d)",
                      line, other);
        w->error = where(w) + b;
        return false;
    }
    if (exited > 0) {
        std::snprintf(b, sizeof b, ": barrier divergence: __syncthreads() at line %d reached by %u of %u threads "
                      "(the others exited)", line, waiting, n);
        w->error = where(w) + b;
        return false;
    }
    w->vote_result = (int)votes;
    for (unsigned i = 0; i < n; ++i) w->fibers[i]->state = State::Ready;
    w->parity ^= 1;
    return true;
}

void end_block(Worker* w) {
    for (Shared& s : w->shared) {
        for (size_t k = 0; k < SHARED_MARGIN; ++k) {
            if ((unsigned char)s.mem[s.bytes + k] != 0xFF) {
                if (w->error.empty()) {
                    char b[160];
                    std::snprintf(b, sizeof b, ": a thread wrote past the end of __shared__ %s (%zu bytes)", s.name,
                                  s.bytes);
                    w->error = where(w) + b;
                }
                break;
            }
        }
        std::free(s.mem);
    }
    w->shared.clear();
    w->shared_bytes = 0;
    std::free(w->sync);
    w->sync = nullptr;
}

bool run_block(Worker* w, Launch* L, unsigned linear) {
    const bngraph_launch_config& c = *L->cfg;
    bngraph_blockIdx = {linear % c.grid[0], (linear / c.grid[0]) % c.grid[1], linear / (c.grid[0] * c.grid[1])};
    bngraph_blockDim = {c.block[0], c.block[1], c.block[2]};
    bngraph_gridDim = {c.grid[0], c.grid[1], c.grid[2]};
    const unsigned n = c.block[0] * c.block[1] * c.block[2];
    w->rng.seed(c.seed * 0x9E3779B97F4A7C15ull + linear + 1);
    w->error.clear();
    w->sync = static_cast<char*>(std::malloc(2));
    w->parity = 0;
    start_fibers(w, n, c.block);
    std::vector<unsigned> ready;
    ready.reserve(n);
    for (;;) {
        ready.clear();
        for (unsigned i = 0; i < n; ++i)
            if (w->fibers[i]->state == State::Ready) ready.push_back(i);
        if (ready.empty()) {
            bool any_waiting = false;
            for (unsigned i = 0; i < n; ++i) any_waiting |= w->fibers[i]->state == State::Barrier;
            if (!any_waiting) break;  // every thread exited: the block is done
            if (!release_barrier(w, n)) break;
            continue;
        }
        std::shuffle(ready.begin(), ready.end(), w->rng);  // a new interleaving every round
        for (unsigned i : ready) {
            if (w->fibers[i]->state != State::Ready) continue;
            switch_to(w, w->fibers[i]);
            if (!w->error.empty()) break;
        }
        if (!w->error.empty()) break;
    }
    if (!w->error.empty()) {
        for (unsigned i = 0; i < n; ++i) w->fibers[i]->abandoned |= w->fibers[i]->state != State::Exited;
    }
    end_block(w);
    if (!w->error.empty()) {
        L->fail(w->error);
        return false;
    }
    return true;
}

// ---- the workers --------------------------------------------------------------------------------
struct Pool {
    std::mutex mu;
    std::condition_variable wake, done;
    std::vector<Worker*> workers;
    Launch* launch = nullptr;
    unsigned long long ticket = 0;
    int wanted = 0, running = 0;
};

Pool* the_pool = nullptr;

Pool& pool() {
    static bool once = [] {
        the_pool = new Pool;  // never destroyed: its threads wait until the process exits
        // a forked child has none of the workers: it starts a pool of its own at its first launch
        pthread_atfork(nullptr, nullptr, [] { the_pool = new Pool; });
        return true;
    }();
    (void)once;
    return *the_pool;
}

void worker_main(Worker* w, int index) {
    tl_worker = w;
    w->csr = _mm_getcsr();
    Pool& P = pool();
#if defined(__SANITIZE_THREAD__)
    w->tsan_sched = __tsan_get_current_fiber();
    __tsan_ignore_thread_begin();  // the scheduler only does bookkeeping
#endif
    unsigned long long seen = 0;
    for (;;) {
        Launch* L;
        {
            std::unique_lock<std::mutex> lock(P.mu);
            P.wake.wait(lock, [&] { return P.ticket != seen; });
            seen = P.ticket;
            if (index >= P.wanted) continue;
            L = P.launch;
        }
        w->launch = L;
        for (size_t k; (k = L->next.fetch_add(1)) < L->order.size() && !L->failed.load();) {
            if (!run_block(w, L, L->order[k])) break;
        }
        std::lock_guard<std::mutex> lock(P.mu);
        if (--P.running == 0) P.done.notify_all();
    }
}

std::mutex& launch_mutex() {
    static std::mutex* m = new std::mutex;
    return *m;
}

}  // namespace

extern "C" {

int bngraph_syncthreads_vote(int line, int site, int predicate, int how) {
    Worker* w;
    Fiber* f;
    char* sync;
    {
        Hidden h;
        w = tl_worker;
        f = w->cur;
        f->state = State::Barrier;
        f->line = line;
        f->site = site;
        f->vote = predicate != 0;
        sync = w->sync + w->parity;
    }
    release(sync);
    switch_out(w, f);
    acquire(sync);
    Hidden h;
    const int count = w->vote_result;
    const int n = (int)(bngraph_blockDim.x * bngraph_blockDim.y * bngraph_blockDim.z);
    return how == 0 ? count : how == 1 ? count == n : count > 0;
}

// __syncthreads(): the barrier of __syncthreads_count/_and/_or with no vote to read.
void bngraph_syncthreads(int line, int site) { bngraph_syncthreads_vote(line, site, 0, 0); }

void bngraph_yield(void) {
    Worker* w;
    Fiber* f = nullptr;
    {
        Hidden h;
        w = tl_worker;
        if (w != nullptr && w->cur != nullptr && (int)(w->rng() % 1000) < w->launch->cfg->yield_per_mille) f = w->cur;
    }
    if (f != nullptr) switch_out(w, f);  // stays Ready: resumes in a later round
}

void* bngraph_shared(void* site, size_t bytes, size_t align, const char* name) {
    Worker* w;
    std::string over;
    {
        Hidden h;
        w = tl_worker;
        for (const Shared& s : w->shared)
            if (s.site == site) return s.mem;
        if (w->shared_bytes + bytes <= SHARED_LIMIT) {
            const size_t a = align < 16 ? 16 : align;
            char* mem = static_cast<char*>(std::aligned_alloc(a, (bytes + SHARED_MARGIN + a - 1) / a * a));
            std::memset(mem, 0xFF, bytes + SHARED_MARGIN);  // NaN in every float and double, -1 in every integer
            w->shared.push_back({site, mem, bytes, name});
            w->shared_bytes += bytes;
            return mem;
        }
        char b[160];
        std::snprintf(b, sizeof b, ": __shared__ %s makes %zu bytes, more than the %zu a block may declare", name,
                      w->shared_bytes + bytes, SHARED_LIMIT);
        over = where(w) + b;
    }
    fault(w, over);
}

const char* bngraph_last_error(void) { return tl_error.c_str(); }

// The sanitizer reports collected since the last call ("" when none).
const char* bngraph_take_reports(void) {
    static thread_local std::string taken;
    std::lock_guard<std::mutex> lock(reports_mutex);
    taken.swap(reports);
    reports.clear();
    return taken.c_str();
}

// Run the launch: every block of c->grid, c->block threads each; 0, or 1 with bngraph_last_error().
int bngraph_launch(const bngraph_launch_config* c, const char* name, void (*body)(void**), void** args) {
    std::lock_guard<std::mutex> one(launch_mutex());  // one launch at a time, as on one stream
    Launch L;
    L.cfg = c;
    L.name = name;
    L.body = body;
    L.args = args;
    const unsigned long long blocks = (unsigned long long)c->grid[0] * c->grid[1] * c->grid[2];
    if (blocks > (1ull << 24)) {
        tl_error = std::string(name) + ": a grid of more than 2**24 blocks is more than the model runs";
        return 1;
    }
    L.order.resize(blocks);
    for (unsigned i = 0; i < blocks; ++i) L.order[i] = i;
    std::mt19937_64 rng(c->seed);
    std::shuffle(L.order.begin(), L.order.end(), rng);  // blocks in a varied order
    const int n = std::max(1, std::min<int>(c->workers, (int)std::min<unsigned long long>(blocks, 64)));
    Pool& P = pool();
    release(&L.start_sync);
    {
        std::unique_lock<std::mutex> lock(P.mu);
        while ((int)P.workers.size() < n) {
            Worker* w = new Worker;
            P.workers.push_back(w);
            std::thread(worker_main, w, (int)P.workers.size() - 1).detach();
        }
        for (int i = 0; i < n; ++i) {
            P.workers[i]->launch = &L;
        }
        P.launch = &L;
        P.wanted = P.running = n;
        ++P.ticket;
        P.wake.notify_all();
        P.done.wait(lock, [&] { return P.running == 0; });
    }
    acquire(&L.done_sync);
    if (L.failed.load()) {
        tl_error = L.error;
        return 1;
    }
    return 0;
}

}  // extern "C"
