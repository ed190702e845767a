// voxelkit.stats: fused exceedance count for the permutation engine (uncorrected permutation p-values).
//
// For a batch of b permutations the engine holds the statistic (or a monotone score of it) as a row-major
// (b x V) matrix.  One thread per voxel v walks the b rows and counts the permutations whose statistic
// (its absolute value for two-sided tests) reaches thr[v] (the observed value minus a tie tolerance), adding
// the count to count[v].  CuPy built-ins need three passes and two (b x V) temporaries for the same
// (abs, >=, sum over axis 0); this reads the matrix once.  Reads are coalesced: for a fixed row, neighbouring
// threads read neighbouring voxels.  No shared memory, no atomics: each thread owns its voxel.

extern "C" __global__ void stats_exceed_count_f32(const float* __restrict__ score, const float* __restrict__ thr,
                                                  int* __restrict__ count, const int n_rows, const int n_vox,
                                                  const int two_sided)
{
    const int v = blockDim.x * blockIdx.x + threadIdx.x;
    if (v >= n_vox) return;
    const float th = thr[v];
    int c = 0;
    for (int k = 0; k < n_rows; ++k) {
        float s = score[(long long)k * n_vox + v];
        if (two_sided) s = fabsf(s);
        if (s >= th) c += 1;
    }
    count[v] += c;
}

extern "C" __global__ void stats_exceed_count_f64(const double* __restrict__ score, const double* __restrict__ thr,
                                                  int* __restrict__ count, const int n_rows, const int n_vox,
                                                  const int two_sided)
{
    const int v = blockDim.x * blockIdx.x + threadIdx.x;
    if (v >= n_vox) return;
    const double th = thr[v];
    int c = 0;
    for (int k = 0; k < n_rows; ++k) {
        double s = score[(long long)k * n_vox + v];
        if (two_sided) s = fabs(s);
        if (s >= th) c += 1;
    }
    count[v] += c;
}
