// voxelkit.stats: largest supra-threshold cluster (extent and mass) of each permuted map, one permutation per
// thread.
//
// The same clusters as voxelkit/stats/clusters.py::batch_cluster_max (cc3d): connected components, under the
// neighbour table of voxelkit/stats/neighbors.py ((V x K) int32, -1 = none), of the voxels whose label is not 0;
// label 1 (positive) and label 2 (negative) voxels are never joined.  The engine computes the labels (score
// above the cluster-forming threshold, sign) with the same array expressions as the NumPy path, so the clusters
// are exactly the same.  Extent = number of voxels; mass = sum of |t| - thr (double).
//
// Thread j walks the voxels in index order; voxel v is joined to its labelled neighbours u < v (already in the
// forest: a union-find with union by size and path halving); a second pass takes the maxima over the roots of the
// final components.  Nothing has to be reset between batches: only cells of labelled voxels are read, and each
// is written when its voxel is added.
//
// Layout (voxel-major: the threads of a warp read neighbouring addresses for the same voxel): t[v * n_rows + j],
// lab[v * n_rows + j] (uint8: 0 none, 1 positive, 2 negative), work arrays parent/mass[v * n_rows + j]
// (parent: >= 0 parent voxel, < 0 root of size -parent; mass: the root's mass).  Outputs ext[j], mass_out[j]
// (double, 0 when map j has no labelled voxel).  n_nb <= 26.

#define VK_CLUSTER_MAX_NB 26

// root of u with path halving (parent: >= 0 parent voxel, < 0 root)
__device__ int vk_cluster_root(int* __restrict__ parent, int u, const long long nr, const long long j) {
    while (true) {
        const int p = parent[(long long)u * nr + j];
        if (p < 0) return u;
        const int gp = parent[(long long)p * nr + j];
        if (gp < 0) return p;
        parent[(long long)u * nr + j] = gp;
        u = gp;
    }
}

// the labelling pass of map j (values from tf when it is not null, else from td)
__device__ void vk_cluster_row(const float* __restrict__ tf, const double* __restrict__ td,
                               const unsigned char* __restrict__ lab, const int* __restrict__ nbr,
                               int* __restrict__ parent, double* __restrict__ mass, const long long nr,
                               const long long j, const int n_vox, const int n_nb, const double thr,
                               int* best_e_out, double* best_m_out) {
    const int K = n_nb < VK_CLUSTER_MAX_NB ? n_nb : VK_CLUSTER_MAX_NB;
    int nbu[VK_CLUSTER_MAX_NB];
    int best_e = 0;
    double best_m = 0.0;
    for (int v = 0; v < n_vox; ++v) {
        const long long at = (long long)v * nr + j;
        const unsigned char l = lab[at];
        if (l == 0) continue;
        double m = fabs(tf ? (double)tf[at] : td[at]) - thr;
        int rv = v;
        int sz = 1;
        parent[at] = -1;
        // the neighbours' labels are all loaded before any merge (independent loads in flight at once)
        const int* row = nbr + (long long)v * n_nb;
#pragma unroll
        for (int k = 0; k < VK_CLUSTER_MAX_NB; ++k) nbu[k] = k < K ? row[k] : -1;
#pragma unroll
        for (int k = 0; k < VK_CLUSTER_MAX_NB; ++k) {
            const int u = nbu[k];
            nbu[k] = (u >= 0 && u < v && lab[(long long)u * nr + j] == l) ? u : -1;
        }
#pragma unroll 1
        for (int k = 0; k < K; ++k) {
            const int u = nbu[k];
            if (u < 0) continue;
            const int ru = vk_cluster_root(parent, u, nr, j);
            if (ru == rv) continue;
            const int su = -parent[(long long)ru * nr + j];
            m += mass[(long long)ru * nr + j];
            if (su > sz) {
                parent[(long long)rv * nr + j] = ru;
                rv = ru;
            } else {
                parent[(long long)ru * nr + j] = rv;
            }
            sz += su;
            parent[(long long)rv * nr + j] = -sz;
        }
        mass[(long long)rv * nr + j] = m;
    }
    // maxima over the final components (their roots), as the NumPy path takes them
    for (int v = 0; v < n_vox; ++v) {
        const long long at = (long long)v * nr + j;
        if (lab[at] == 0) continue;
        const int p = parent[at];
        if (p >= 0) continue;
        if (-p > best_e) best_e = -p;
        if (mass[at] > best_m) best_m = mass[at];
    }
    *best_e_out = best_e;
    *best_m_out = best_m;
}

extern "C" __global__ void stats_cluster_max_f32(const float* __restrict__ t, const unsigned char* __restrict__ lab,
                                                 const int* __restrict__ nbr, int* __restrict__ parent,
                                                 double* __restrict__ mass, double* __restrict__ ext,
                                                 double* __restrict__ mass_out, const int n_rows, const int n_vox,
                                                 const int n_nb, const double thr)
{
    const int j = blockDim.x * blockIdx.x + threadIdx.x;
    if (j >= n_rows) return;
    int e = 0;
    double m = 0.0;
    vk_cluster_row(t, nullptr, lab, nbr, parent, mass, n_rows, j, n_vox, n_nb, thr, &e, &m);
    ext[j] = (double)e;
    mass_out[j] = m;
}

extern "C" __global__ void stats_cluster_max_f64(const double* __restrict__ t, const unsigned char* __restrict__ lab,
                                                 const int* __restrict__ nbr, int* __restrict__ parent,
                                                 double* __restrict__ mass, double* __restrict__ ext,
                                                 double* __restrict__ mass_out, const int n_rows, const int n_vox,
                                                 const int n_nb, const double thr)
{
    const int j = blockDim.x * blockIdx.x + threadIdx.x;
    if (j >= n_rows) return;
    int e = 0;
    double m = 0.0;
    vk_cluster_row(nullptr, t, lab, nbr, parent, mass, n_rows, j, n_vox, n_nb, thr, &e, &m);
    ext[j] = (double)e;
    mass_out[j] = m;
}
