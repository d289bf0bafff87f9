// bngraph's CUDA execution model on the CPU: the prelude of a kernel module.
//
// The generated .cu text is compiled as C++ after this prelude, and each launch runs as CUDA
// would run it: its whole grid, every block a set of fibers (one per thread, threads_runtime.cpp)
// with __syncthreads a real barrier, __shared__ memory per block, atomics real atomics. CUDA's
// keywords become calls into the runtime library (threads_runtime.cpp, loaded first).
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>
using std::exp; using std::log; using std::log1p; using std::sqrt; using std::tanh; using std::fabs;
using std::fmax; using std::fmin; using std::isfinite; using std::isnan; using std::isinf;

struct bngraph_dim3 { unsigned x, y, z; };

extern "C" {
// set by the runtime for the thread (fiber) that runs: a block's fibers share one OS thread
extern thread_local bngraph_dim3 bngraph_threadIdx, bngraph_blockIdx, bngraph_blockDim, bngraph_gridDim;
void bngraph_syncthreads(int line, int site);
int bngraph_syncthreads_vote(int line, int site, int predicate, int how);  // how: 0 count, 1 and, 2 or
void bngraph_yield(void);  // another thread of the block may run here (after an atomic, a fence)
void* bngraph_shared(void* site, size_t bytes, size_t align, const char* name);
}

#define threadIdx bngraph_threadIdx
#define blockIdx bngraph_blockIdx
#define blockDim bngraph_blockDim
#define gridDim bngraph_gridDim
#define warpSize 32
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
// a barrier is its call site in the text (__COUNTER__: one per __syncthreads written), named by its
// line in the .cu file (a #line directive precedes the kernels) in a barrier-divergence error
#define __syncthreads() bngraph_syncthreads(__LINE__, __COUNTER__)
#define __syncthreads_count(p) bngraph_syncthreads_vote(__LINE__, __COUNTER__, (p), 0)
#define __syncthreads_and(p) bngraph_syncthreads_vote(__LINE__, __COUNTER__, (p), 1)
#define __syncthreads_or(p) bngraph_syncthreads_vote(__LINE__, __COUNTER__, (p), 2)
#define __threadfence() (__atomic_thread_fence(__ATOMIC_SEQ_CST), bngraph_yield())
#define __threadfence_block() __threadfence()
#define __ldg(p) (*(p))
// `__shared__ T name[n];` is rewritten by the model's compiler (threads.py) into this: one array per
// block, poisoned (all bits set: NaN in floating point) before the block's first thread declares it
#define BNGRAPH_SHARED(T, name, n) \
    static char bngraph_site_##name; \
    T* const name = static_cast<T*>(bngraph_shared(&bngraph_site_##name, sizeof(T) * (n), alignof(T), #name))

// ---- atomics: real (relaxed, as CUDA's), each followed by a point where the block may switch threads
template <class T, class F>
inline T bngraph_rmw(T* a, F f) {
    T old, want;
    __atomic_load(a, &old, __ATOMIC_RELAXED);
    do {
        want = f(old);
    } while (!__atomic_compare_exchange(a, &old, &want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    bngraph_yield();
    return old;
}
#define BNGRAPH_ATOMIC(name, T, expr) \
    inline T name(T* a, T v) { return bngraph_rmw(a, [v](T o) { return (T)(expr); }); }
BNGRAPH_ATOMIC(atomicAdd, int, o + v)
BNGRAPH_ATOMIC(atomicAdd, unsigned, o + v)
BNGRAPH_ATOMIC(atomicAdd, unsigned long long, o + v)
BNGRAPH_ATOMIC(atomicAdd, float, o + v)
BNGRAPH_ATOMIC(atomicAdd, double, o + v)
BNGRAPH_ATOMIC(atomicSub, int, o - v)
BNGRAPH_ATOMIC(atomicSub, unsigned, o - v)
BNGRAPH_ATOMIC(atomicExch, int, v)
BNGRAPH_ATOMIC(atomicExch, unsigned, v)
BNGRAPH_ATOMIC(atomicExch, unsigned long long, v)
BNGRAPH_ATOMIC(atomicExch, float, v)
BNGRAPH_ATOMIC(atomicMin, int, v < o ? v : o)
BNGRAPH_ATOMIC(atomicMin, unsigned, v < o ? v : o)
BNGRAPH_ATOMIC(atomicMin, long long, v < o ? v : o)
BNGRAPH_ATOMIC(atomicMin, unsigned long long, v < o ? v : o)
BNGRAPH_ATOMIC(atomicMax, int, v > o ? v : o)
BNGRAPH_ATOMIC(atomicMax, unsigned, v > o ? v : o)
BNGRAPH_ATOMIC(atomicMax, long long, v > o ? v : o)
BNGRAPH_ATOMIC(atomicMax, unsigned long long, v > o ? v : o)
BNGRAPH_ATOMIC(atomicOr, int, o | v)
BNGRAPH_ATOMIC(atomicOr, unsigned, o | v)
BNGRAPH_ATOMIC(atomicOr, unsigned long long, o | v)
BNGRAPH_ATOMIC(atomicAnd, int, o & v)
BNGRAPH_ATOMIC(atomicAnd, unsigned, o & v)
BNGRAPH_ATOMIC(atomicAnd, unsigned long long, o & v)
BNGRAPH_ATOMIC(atomicXor, int, o ^ v)
BNGRAPH_ATOMIC(atomicXor, unsigned, o ^ v)
BNGRAPH_ATOMIC(atomicXor, unsigned long long, o ^ v)
BNGRAPH_ATOMIC(atomicInc, unsigned, o >= v ? 0 : o + 1)
BNGRAPH_ATOMIC(atomicDec, unsigned, (o == 0 || o > v) ? v : o - 1)
#undef BNGRAPH_ATOMIC
#define BNGRAPH_CAS(T) \
    inline T atomicCAS(T* a, T compare, T v) { \
        __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); \
        bngraph_yield(); \
        return compare; \
    }
BNGRAPH_CAS(int)
BNGRAPH_CAS(unsigned)
BNGRAPH_CAS(unsigned long long)
#undef BNGRAPH_CAS

// ---- what the launcher needs of each kernel: a call from an argument vector, and its signature
namespace bngraph_model {
template <class... A, std::size_t... I>
inline void call(void (*f)(A...), void** a, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(a[I])...);
}
template <class... A>
inline void call(void (*f)(A...), void** a) { call(f, a, std::index_sequence_for<A...>{}); }

// one letter per parameter: a scalar's type (i int, l long long, u unsigned long long, f float,
// d double), or for a pointer its element's type in capitals; ? anything else
template <class T> constexpr char scalar_code() {
    using U = std::remove_cv_t<T>;
    return std::is_same<U, int>::value ? 'i' : std::is_same<U, long long>::value ? 'l'
         : std::is_same<U, unsigned long long>::value ? 'u' : std::is_same<U, unsigned>::value ? 'n'
         : std::is_same<U, float>::value ? 'f' : std::is_same<U, double>::value ? 'd' : '?';
}
template <class T> constexpr char code() {
    if constexpr (std::is_pointer<T>::value) {
        constexpr char c = scalar_code<std::remove_pointer_t<T>>();
        return c == '?' ? 'P' : (char)(c - 'a' + 'A');
    } else {
        return scalar_code<T>();
    }
}
template <class... A>
inline const char* signature(void (*)(A...)) {
    static const char s[] = {code<A>()..., '\0'};
    return s;
}
}  // namespace bngraph_model

extern "C" {
struct bngraph_launch_config {
    unsigned grid[3], block[3];
    unsigned long long seed;
    int workers, yield_per_mille, ftz;
};
int bngraph_launch(const bngraph_launch_config* c, const char* name, void (*body)(void**), void** args);
}
