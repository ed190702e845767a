// voxelkit CPU shim: compiles CUDA kernel sources (kernels/*.cu) as host C++ with g++.
//
// Test-only.  tests/cuda_shim/build.py generates a translation unit that includes this header, then the
// .cu source, then a launcher per `extern "C" __global__` kernel that loops over the whole grid and sets
// the thread-local threadIdx/blockIdx/blockDim/gridDim before each call.  Blocks may run in parallel
// (OpenMP); threads of one block run one after the other, so only kernels that need no cooperation between
// threads are supported: shared memory, __syncthreads and warp intrinsics are compile errors here (they
// are also banned by DEVELOPING.md).
#ifndef VOXELKIT_CUDA_SHIM_H
#define VOXELKIT_CUDA_SHIM_H

#define VOXELKIT_CPU_SHIM 1

#include <math.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <float.h>
#include <limits.h>
#include <cmath>
#include <type_traits>

// ---------------------------------------------------------------- execution-space qualifiers
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __grid_constant__
// __restrict__ is kept: g++ understands it with the same meaning as nvcc/NVRTC.

// ---------------------------------------------------------------- built-in variables
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

static thread_local uint3 threadIdx = {0, 0, 0};
static thread_local uint3 blockIdx = {0, 0, 0};
static thread_local dim3 blockDim(1, 1, 1);
static thread_local dim3 gridDim(1, 1, 1);
static const int warpSize = 32;

// ---------------------------------------------------------------- things voxelkit kernels must not use
// Any use is a compile error that names the construct.  (Threads of a block run sequentially here, so
// these could not be emulated faithfully anyway.)
#define VKSHIM_FORBIDDEN(what)                                                                               \
    ([]() -> int {                                                                                           \
        static_assert(sizeof(int) == 0, "voxelkit CPU shim: " what                                           \
                      " is not allowed in voxelkit kernels (see DEVELOPING.md)");                           \
        return 0;                                                                                            \
    }())
#define __shared__ _Pragma("GCC error \"voxelkit CPU shim: __shared__ memory is not allowed in voxelkit kernels (see DEVELOPING.md)\"")
#define __syncthreads(...) VKSHIM_FORBIDDEN("__syncthreads")
#define __syncthreads_count(...) VKSHIM_FORBIDDEN("__syncthreads_count")
#define __syncthreads_and(...) VKSHIM_FORBIDDEN("__syncthreads_and")
#define __syncthreads_or(...) VKSHIM_FORBIDDEN("__syncthreads_or")
#define __syncwarp(...) VKSHIM_FORBIDDEN("__syncwarp")
#define __shfl_sync(...) VKSHIM_FORBIDDEN("__shfl_sync (warp intrinsic)")
#define __shfl_up_sync(...) VKSHIM_FORBIDDEN("__shfl_up_sync (warp intrinsic)")
#define __shfl_down_sync(...) VKSHIM_FORBIDDEN("__shfl_down_sync (warp intrinsic)")
#define __shfl_xor_sync(...) VKSHIM_FORBIDDEN("__shfl_xor_sync (warp intrinsic)")
#define __shfl(...) VKSHIM_FORBIDDEN("__shfl (warp intrinsic)")
#define __shfl_up(...) VKSHIM_FORBIDDEN("__shfl_up (warp intrinsic)")
#define __shfl_down(...) VKSHIM_FORBIDDEN("__shfl_down (warp intrinsic)")
#define __shfl_xor(...) VKSHIM_FORBIDDEN("__shfl_xor (warp intrinsic)")
#define __ballot_sync(...) VKSHIM_FORBIDDEN("__ballot_sync (warp intrinsic)")
#define __ballot(...) VKSHIM_FORBIDDEN("__ballot (warp intrinsic)")
#define __any_sync(...) VKSHIM_FORBIDDEN("__any_sync (warp intrinsic)")
#define __all_sync(...) VKSHIM_FORBIDDEN("__all_sync (warp intrinsic)")
#define __match_any_sync(...) VKSHIM_FORBIDDEN("__match_any_sync (warp intrinsic)")
#define __match_all_sync(...) VKSHIM_FORBIDDEN("__match_all_sync (warp intrinsic)")
#define __reduce_add_sync(...) VKSHIM_FORBIDDEN("__reduce_add_sync (warp intrinsic)")
#define __activemask(...) VKSHIM_FORBIDDEN("__activemask (warp intrinsic)")

// Memory fences are meaningless here (every block's threads run in order on one host thread).
#define __threadfence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __threadfence_block() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __threadfence_system() __atomic_thread_fence(__ATOMIC_SEQ_CST)

// ---------------------------------------------------------------- math: CUDA overloads and intrinsics
// CUDA device code can call min/max unqualified on ints and floats.
template <class A, class B>
static inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)b < (T)a ? (T)b : (T)a;
}
template <class A, class B>
static inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a < (T)b ? (T)b : (T)a;
}
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

// Fast-math intrinsics: libm is more accurate than the GPU's approximations; compare with tolerances.
// glibc already declares __expf & co. as internal libm aliases, so these are macros.
#define __expf(x) expf(x)
#define __exp10f(x) exp10f(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __powf(x, y) powf((x), (y))
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __sincosf(x, s, c) sincosf((x), (s), (c))
static inline float __fdividef(float a, float b) { return a / b; }
static inline float fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline float saturatef(float x) { return __saturatef(x); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
static inline double rcbrt(double x) { return 1.0 / cbrt(x); }
static inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
static inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752440); }

// Correctly rounded arithmetic (round-to-nearest only: the host rounding mode).
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __drcp_rn(double x) { return 1.0 / x; }
static inline double __dsqrt_rn(double x) { return sqrt(x); }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

// Conversions and bit casts.
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline int __double2int_rn(double x) { return (int)nearbyint(x); }
static inline int __double2int_rz(double x) { return (int)x; }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __double2float_rn(double x) { return (float)x; }
static inline int __float_as_int(float x) { int r; memcpy(&r, &x, sizeof r); return r; }
static inline unsigned int __float_as_uint(float x) { unsigned int r; memcpy(&r, &x, sizeof r); return r; }
static inline float __int_as_float(int x) { float r; memcpy(&r, &x, sizeof r); return r; }
static inline float __uint_as_float(unsigned int x) { float r; memcpy(&r, &x, sizeof r); return r; }
static inline long long __double_as_longlong(double x) { long long r; memcpy(&r, &x, sizeof r); return r; }
static inline double __longlong_as_double(long long x) { double r; memcpy(&r, &x, sizeof r); return r; }
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }

// Read-only cache loads.
template <class T>
static inline T __ldg(const T* p) { return *p; }

// ---------------------------------------------------------------- atomics (GCC __atomic builtins)
// Integer add/sub/and/or/xor/exch map to fetch-and-op; float/double add and min/max use a CAS loop.
template <class T>
static inline T vkshim_atomic_update_(T* address, T (*op)(T, T), T val) {
    T old;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    T desired;
    do {
        desired = op(old, val);
    } while (!__atomic_compare_exchange(address, &old, &desired, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    return old;
}
template <class T> static inline T vkshim_add_(T a, T b) { return a + b; }
template <class T> static inline T vkshim_min_(T a, T b) { return b < a ? b : a; }
template <class T> static inline T vkshim_max_(T a, T b) { return a < b ? b : a; }

#define VKSHIM_INT_ATOMICS(T)                                                                               \
    static inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }            \
    static inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }            \
    static inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }            \
    static inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }              \
    static inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }            \
    static inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }          \
    static inline T atomicMin(T* a, T v) { return vkshim_atomic_update_<T>(a, vkshim_min_<T>, v); }        \
    static inline T atomicMax(T* a, T v) { return vkshim_atomic_update_<T>(a, vkshim_max_<T>, v); }        \
    static inline T atomicCAS(T* a, T compare, T v) {                                                      \
        __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);          \
        return compare;                                                                                    \
    }
VKSHIM_INT_ATOMICS(int)
VKSHIM_INT_ATOMICS(unsigned int)
VKSHIM_INT_ATOMICS(unsigned long long)
VKSHIM_INT_ATOMICS(long long)
#undef VKSHIM_INT_ATOMICS

static inline float atomicAdd(float* a, float v) { return vkshim_atomic_update_<float>(a, vkshim_add_<float>, v); }
static inline double atomicAdd(double* a, double v) {
    return vkshim_atomic_update_<double>(a, vkshim_add_<double>, v);
}
static inline float atomicExch(float* a, float v) {
    float old;
    __atomic_exchange(a, &v, &old, __ATOMIC_SEQ_CST);
    return old;
}
static inline unsigned int atomicInc(unsigned int* a, unsigned int limit) {
    unsigned int old;
    __atomic_load(a, &old, __ATOMIC_RELAXED);
    unsigned int desired;
    do {
        desired = (old >= limit) ? 0u : old + 1u;
    } while (!__atomic_compare_exchange(a, &old, &desired, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    return old;
}

// ---------------------------------------------------------------- launch helper used by the generated code
static inline void vkshim_enter_block_(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                       unsigned bz, long long b) {
    gridDim = dim3(gx, gy, gz);
    blockDim = dim3(bx, by, bz);
    blockIdx.x = (unsigned)(b % gx);
    blockIdx.y = (unsigned)((b / gx) % gy);
    blockIdx.z = (unsigned)(b / ((long long)gx * gy));
}

#endif  // VOXELKIT_CUDA_SHIM_H
