// voxelkit.stats: max-only exact TFCE of a batch of permuted statistic maps, one permutation per thread.
//
// The same algorithm as voxelkit/stats/tfce.py::_max_pass (numba): the voxels of map j, sorted by value, are
// added to a disjoint-set forest from the highest value down (positive part) and, for two-sided tests, from the
// lowest value up (negative part, on -t).  A component of size s that becomes size S at height h adds
// h^(H+1) (S^E - s^E) to each of its voxels and a voxel's birth adds h^(H+1) (Abel summation of the TFCE
// integral), so each root keeps only the largest value among its voxels (best) and a merge takes the larger;
// the map's maximum is the largest root value ever seen, divided by (H+1).  Neighbours come from the (V x K)
// neighbour table of voxelkit/stats/neighbors.py (-1 = none), visited in the same order as the numba kernel's
// grid offsets, so merges happen in the same order.
//
// Layout (voxel-major, so that the threads of a warp touch neighbouring addresses when they read the same
// position): sv[ii * n_rows + j] the ii-th smallest value of map j (float32), sidx[ii * n_rows + j] its voxel;
// work arrays parent/best[u * n_rows + j] for voxel u of map j.  parent must be all zero on entry: 0 = not in
// the forest, > 0 = parent voxel + 1, < 0 = root of size -parent; every touched cell is reset to 0 before the
// thread returns, so the array can be reused by the next batch.  sizeE[k] = k^E for k = 0..n_vox (double).
// out[j] = max TFCE of map j (two-sided: the larger of the positive and negative parts).  n_nb <= 26.  No shared memory,
// no atomics: each thread owns its permutation's slice of the work arrays.

__device__ __forceinline__ long long vk_tfce_at(const int u, const long long nr, const long long j) {
    return (long long)u * nr + j;
}

// root of u with path halving (parent values: > 0 parent + 1, < 0 root)
__device__ int vk_tfce_root(int* __restrict__ parent, int u, const long long nr, const long long j) {
    while (true) {
        const int p = parent[vk_tfce_at(u, nr, j)];
        if (p < 0) return u;
        const int pu = p - 1;
        const int gp = parent[vk_tfce_at(pu, nr, j)];
        if (gp < 0) return pu;
        parent[vk_tfce_at(u, nr, j)] = gp;
        u = gp - 1;
    }
}

#define VK_TFCE_MAX_NB 26

// one pass over the voxels of map j from position start by step (decreasing sgn * value); returns the max of
// (H+1) * TFCE over the part of sgn * value above 0.  The next voxel's value and index are loaded one step
// ahead, and the neighbours' forest cells are all loaded before any merge (independent loads in flight at
// once, as the numba kernel collects them without branches); merges then follow in neighbour-table order.
__device__ double vk_tfce_pass(const float* __restrict__ sv, const int* __restrict__ sidx,
                               const int* __restrict__ nbr, const double* __restrict__ sizeE,
                               int* __restrict__ parent, double* __restrict__ best, const long long nr,
                               const long long j, const int n_vox, const int n_nb, const double H,
                               const int start, const int step, const double sgn) {
    const int K = n_nb < VK_TFCE_MAX_NB ? n_nb : VK_TFCE_MAX_NB;
    int nbu[VK_TFCE_MAX_NB];
    double gmax = 0.0;
    int n_added = 0;
    int ii = start;
    if (ii < 0 || ii >= n_vox) return 0.0;
    float v_next = sv[(long long)ii * nr + j];
    int g_next = sidx[(long long)ii * nr + j];
    while (true) {
        const double h = sgn * (double)v_next;
        if (!(h > 0.0)) break;
        const int g = g_next;
        const int i_next = ii + step;
        const int has_next = i_next >= 0 && i_next < n_vox;
        if (has_next) {
            v_next = sv[(long long)i_next * nr + j];
            g_next = sidx[(long long)i_next * nr + j];
        }
        const double hh = H == 2.0 ? h * h * h : pow(h, H + 1.0);
        n_added += 1;
        const int* row = nbr + (long long)g * n_nb;
#pragma unroll
        for (int k = 0; k < VK_TFCE_MAX_NB; ++k) nbu[k] = k < K ? row[k] : -1;
#pragma unroll
        for (int k = 0; k < VK_TFCE_MAX_NB; ++k) {
            const int u = nbu[k];
            nbu[k] = (u >= 0 && parent[vk_tfce_at(u, nr, j)] != 0) ? u : -1;
        }
        parent[vk_tfce_at(g, nr, j)] = -1;
        double bv = hh;
        int rv = g;
        int sz = 1;
#pragma unroll 1
        for (int k = 0; k < K; ++k) {
            const int u = nbu[k];
            if (u < 0) continue;
            const int ru = vk_tfce_root(parent, u, nr, j);
            if (ru == rv) continue;
            const int su = -parent[vk_tfce_at(ru, nr, j)];
            const int s = su + sz;
            const double es = sizeE[s];
            const double bu = best[vk_tfce_at(ru, nr, j)] + hh * (es - sizeE[su]);
            const double bw = bv + hh * (es - sizeE[sz]);
            bv = bw > bu ? bw : bu;
            if (su > sz) {
                parent[vk_tfce_at(rv, nr, j)] = ru + 1;
                rv = ru;
            } else {
                parent[vk_tfce_at(ru, nr, j)] = rv + 1;
            }
            parent[vk_tfce_at(rv, nr, j)] = -s;
            sz = s;
        }
        best[vk_tfce_at(rv, nr, j)] = bv;
        if (bv > gmax) gmax = bv;
        if (!has_next) break;
        ii = i_next;
    }
    // reset the touched cells (the forest of the next pass / batch starts empty)
    for (int q = 0, i = start; q < n_added; ++q, i += step) {
        parent[vk_tfce_at(sidx[(long long)i * nr + j], nr, j)] = 0;
    }
    return gmax;
}

extern "C" __global__ void stats_tfce_max(const float* __restrict__ sv, const int* __restrict__ sidx,
                                          const int* __restrict__ nbr, const double* __restrict__ sizeE,
                                          int* __restrict__ parent, double* __restrict__ best,
                                          double* __restrict__ out, const int n_rows, const int n_vox,
                                          const int n_nb, const double H, const int two_sided)
{
    const int j = blockDim.x * blockIdx.x + threadIdx.x;
    if (j >= n_rows) return;
    double m = 0.0;
    if (n_vox > 0) {
        m = vk_tfce_pass(sv, sidx, nbr, sizeE, parent, best, n_rows, j, n_vox, n_nb, H, n_vox - 1, -1, 1.0);
        if (two_sided) {
            const double mn = vk_tfce_pass(sv, sidx, nbr, sizeE, parent, best, n_rows, j, n_vox, n_nb, H, 0, 1,
                                           -1.0);
            if (mn > m) m = mn;
        }
    }
    out[j] = m / (H + 1.0);
}
