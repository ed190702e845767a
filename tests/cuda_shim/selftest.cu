// Test-only kernels for the CPU shim and the NVRTC check (tests/test_cuda_shim.py).  Not shipped.
// Same conventions as kernels/*.cu: extern "C" __global__, one work item per thread or grid-stride.

// y[i] = a * x[i] + y[i]
extern "C" __global__ void saxpy(float* __restrict__ y, const float* __restrict__ x, const float a, const int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = fmaf(a, x[i], y[i]);
}

// out[i] = number of launched threads that handled item i (must be exactly 1 for every i < n).
extern "C" __global__ void coverage(int* out, const int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&out[i], 1);
}

// Grid-stride loop over n items, double accumulation, double atomics.
extern "C" __global__ void grid_stride_sum(const double* x, double* total, int* visits, const long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        atomicAdd(total, x[i]);
        atomicAdd(&visits[i], 1);
    }
}

// Histogram of uint8 labels into nbins int counters (atomicAdd int), plus a per-bin float sum and max.
extern "C" __global__ void histogram(const unsigned char* labels, const float* w, int* counts, float* sums,
                                     int* maxidx, const int n, const int nbins) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int b = labels[i];
    if (b >= nbins) return;
    atomicAdd(&counts[b], 1);
    atomicAdd(&sums[b], w[i]);
    atomicMax(&maxidx[b], i);
}

// 3-D launch: out[z][y][x] = linear index, computed from all the built-in variables.
extern "C" __global__ void index3d(int* out, const int nx, const int ny, const int nz) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int z = blockIdx.z * blockDim.z + threadIdx.z;
    if (x >= nx || y >= ny || z >= nz) return;
    out[(z * ny + y) * nx + x] = x + nx * (y + ny * z);
}

// Fast-math intrinsics and double helpers.
__device__ __forceinline__ double logistic(double v) { return 1.0 / (1.0 + exp(-v)); }

extern "C" __global__ void intrinsics(const float* x, float* out, double* outd, const int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    out[5 * i + 0] = __expf(v);
    out[5 * i + 1] = __logf(v + 2.0f);
    out[5 * i + 2] = __fdividef(v, 3.0f);
    out[5 * i + 3] = rsqrtf(v + 2.0f);
    out[5 * i + 4] = fmaxf(fminf(v, 1.0f), -1.0f) + (float)max(i, 0) * 0.0f;
    outd[i] = logistic((double)v);
}

// Deliberately unguarded: writes out[i] for every launched thread.  A launch of n items rounded up to
// whole blocks writes past the end of out; the sanitizer build must catch it.
extern "C" __global__ void unguarded_fill(float* out, const float value, const int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = value + 0.0f * n;
}

// The guarded twin of unguarded_fill.
extern "C" __global__ void guarded_fill(float* out, const float value, const int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = value;
}

// The other atomics: min/max (int), CAS-based claim, exchange, unsigned long long add, double add.
extern "C" __global__ void atomics_misc(const int* v, int* minmax, int* owner, float* last,
                                        unsigned long long* count, double* dsum, const int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicMin(&minmax[0], v[i]);
    atomicMax(&minmax[1], v[i]);
    atomicCAS(&owner[v[i] & 7], -1, i);  // first thread to arrive claims its slot
    atomicExch(last, (float)i);
    atomicAdd(count, 1ull);
    atomicAdd(dsum, (double)v[i]);
}
