// Basis-function SRTM / SRTM2: choice of the best basis function and parameters, one voxel per thread.
// The projections p = (w * Ct) @ Z (n x (nb+1), float32) come from a cuBLAS GEMM (CuPy matmul); these kernels
// replace the (voxels x basis) temporaries of the NumPy path (voxelkit/models/srtm.py: srtm_select_xp and
// srtm2_select_xp, same math) by a loop over the basis functions per voxel.
// Inputs: y[n x f] float32 fitted-frame TACs (row-major), wu[f] frame weights (double), p[n x (nb+1)] float32
// projections (column 0: c0 = <Ct, Cr>_w / |Cr|_w; columns 1..nb: q_j or s_j) used only to pick the best grid
// point, zt = the same projection vectors in double (the stencil of 5 grid points around the best one is
// recomputed in double), thetas[nb] grid (1/min, log-spaced with step log_step), m5 the 5 x 5 quartic
// interpolation matrix, refine 1 = refinement between grid points (quartic through the stencil + Newton).
// Status codes as voxelkit/models/status.py.

#define VK_OK 0
#define VK_NONFINITE 3
#define VK_NONPOSITIVE 4
#define VK_GRID_EDGE 5
#define VK_IMPLAUSIBLE 6

// sum(w y^2) over the fitted frames; returns 0 (and sets *finite = 0) on a non-finite value
__device__ double vk_weighted_ss(const float* y, const double* wu, int f, int* finite) {
    double yy = 0.0;
    *finite = 1;
    for (int j = 0; j < f; ++j) {
        const double v = (double)y[j];
        if (!isfinite(v)) { *finite = 0; return 0.0; }
        yy += wu[j] * v * v;
    }
    return yy;
}

// <y, zt[col]> in double (zt: (nb+1) x f, row-major)
__device__ double vk_project(const float* y, const double* zt, int col, int f) {
    const double* z = zt + (long long)col * f;
    double acc = 0.0;
    for (int j = 0; j < f; ++j) acc += (double)y[j] * z[j];
    return acc;
}

__device__ double vk_quartic(const double* a, double t) {
    return a[0] + t * (a[1] + t * (a[2] + t * (a[3] + t * a[4])));
}

// Refinement between grid points (voxelkit/models/srtm.py: _refine).  q5: projections at the stencil
// c-2..c+2, tb = best - c, m5: 5 x 5 row-major (quartic coefficients a = m5 @ q5).  Returns t (grid steps
// from c) and the interpolation weights w[5] at t.
__device__ double vk_refine(const double* q5, double tb, int use, const double* m5, double* w) {
    double a[5];
    for (int m = 0; m < 5; ++m) {
        double acc = 0.0;
        for (int k = 0; k < 5; ++k) acc += m5[m * 5 + k] * q5[k];
        a[m] = acc;
    }
    int j0 = (int)(tb + 2.0);
    if (j0 < 1) j0 = 1;
    if (j0 > 3) j0 = 3;
    const double s_m = q5[j0 - 1] * q5[j0 - 1], s_0 = q5[j0] * q5[j0], s_p = q5[j0 + 1] * q5[j0 + 1];
    const double d = s_m - 2.0 * s_0 + s_p;
    double off = 0.0;
    if (use && d < 0.0) off = (s_m - s_p) / (2.0 * d);
    if (off > 0.5) off = 0.5;
    if (off < -0.5) off = -0.5;
    const double t0 = tb + off;
    double t = t0;
    for (int it = 0; it < 4; ++it) {
        const double d1 = a[1] + t * (2.0 * a[2] + t * (3.0 * a[3] + t * 4.0 * a[4]));
        const double d2 = 2.0 * a[2] + t * (6.0 * a[3] + t * 12.0 * a[4]);
        const double step = d2 != 0.0 ? d1 / d2 : 0.0;
        t = t - step;
        if (t < -2.0) t = -2.0;
        if (t > 2.0) t = 2.0;
    }
    const double qn = fabs(vk_quartic(a, t)), q0 = fabs(vk_quartic(a, t0));
    if (!(qn >= q0)) t = t0;
    if (!((qn > q0 ? qn : q0) >= fabs(q5[j0]))) t = tb;
    if (!use) t = tb;
    const double pw[5] = {1.0, t, t * t, t * t * t, t * t * t * t};
    for (int k = 0; k < 5; ++k) {
        double acc = 0.0;
        for (int m = 0; m < 5; ++m) acc += pw[m] * m5[m * 5 + k];
        w[k] = acc;
    }
    return t;
}

// best grid point: largest |q_j| (SRTM) or s_j (SRTM2, signed) among p[1..nb] (first one on ties, as numpy.argmax)
__device__ int vk_best(const float* row, int nb, int is_signed) {
    int best = 0;
    float vmax = is_signed ? row[1] : fabsf(row[1]);
    for (int j = 1; j < nb; ++j) {
        const float v = is_signed ? row[1 + j] : fabsf(row[1 + j]);
        if (v > vmax) { vmax = v; best = j; }
    }
    return best;
}

// SRTM.  p[n x (nb+1)] float32 = y @ z (choice of the grid point only); zt[(nb+1) x f] double = z^T (column 0:
// w Cr/|Cr|_w, column j: w e_j, e_j the w-orthonormalised basis j); alpha, beta: B_j = alpha_j e0 + beta_j e_j
// (+ Cr part), gamma = |Cr|_w.
extern "C" __global__ void srtm_select(const float* __restrict__ y, const double* __restrict__ wu,
                                       const float* __restrict__ p, const double* __restrict__ zt,
                                       const double* __restrict__ thetas, const double* __restrict__ alpha,
                                       const double* __restrict__ beta, const double* __restrict__ m5,
                                       const double gamma, const double log_step, const int n, const int f,
                                       const int nb, const int refine, float* __restrict__ bp_nd,
                                       float* __restrict__ r1_out, float* __restrict__ k2_out,
                                       float* __restrict__ k2prime_out, float* __restrict__ theta3_out,
                                       float* __restrict__ wrss_out, unsigned char* __restrict__ status) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* yi = y + i * (long long)f;
    int finite = 1;
    const double yy = vk_weighted_ss(yi, wu, f, &finite);
    const double c0 = finite ? vk_project(yi, zt, 0, f) : 0.0;
    unsigned char st = VK_OK;
    if (!finite || !isfinite(c0)) st = VK_NONFINITE;
    else if (!(c0 > 0.0)) st = VK_NONPOSITIVE;
    if (st != VK_OK) {
        const float nan = __int_as_float(0x7fc00000);
        status[i] = st;
        bp_nd[i] = nan; r1_out[i] = nan; k2_out[i] = nan; k2prime_out[i] = nan; theta3_out[i] = nan;
        wrss_out[i] = nan;
        return;
    }
    const int best = vk_best(p + i * (long long)(nb + 1), nb, 0);
    const int edge = (best == 0 || best == nb - 1);
    const int c = best < 2 ? 2 : (best > nb - 3 ? nb - 3 : best);
    double q5[5], w[5];
    for (int k = 0; k < 5; ++k) q5[k] = vk_project(yi, zt, c - 2 + k + 1, f);
    const double t = vk_refine(q5, (double)(best - c), refine && !edge, m5, w);
    double q = 0.0, r1 = 0.0, t2 = 0.0;
    for (int k = 0; k < 5; ++k) {
        const int j = c - 2 + k;
        const double t2k = q5[k] / beta[j];
        q += w[k] * q5[k];
        t2 += w[k] * t2k;
        r1 += w[k] * ((c0 - t2k * alpha[j]) / gamma);
    }
    const double theta3 = thetas[c] * exp(t * log_step);
    double wrss = yy - c0 * c0 - q * q;
    if (wrss < 0.0) wrss = 0.0;
    const double k2 = t2 + r1 * theta3;
    if (r1 <= 0.0 || k2 <= 0.0) st = VK_IMPLAUSIBLE;
    else if (edge) st = VK_GRID_EDGE;
    status[i] = st;
    bp_nd[i] = (float)(k2 / theta3 - 1.0);
    r1_out[i] = (float)r1;
    k2_out[i] = (float)k2;
    k2prime_out[i] = (float)(k2 / r1);
    theta3_out[i] = (float)theta3;
    wrss_out[i] = (float)wrss;
}

// SRTM2: columns 1..nb of p / zt belong to X_j = Cr + (k2' - k2a_j) B_j normalised (w X_j / |X_j|_w);
// R1_j = s_j / xnorm_j.
extern "C" __global__ void srtm2_select(const float* __restrict__ y, const double* __restrict__ wu,
                                        const float* __restrict__ p, const double* __restrict__ zt,
                                        const double* __restrict__ thetas, const double* __restrict__ xnorm,
                                        const double* __restrict__ m5, const double k2prime,
                                        const double log_step, const int n, const int f, const int nb,
                                        const int refine, float* __restrict__ bp_nd, float* __restrict__ r1_out,
                                        float* __restrict__ k2_out, float* __restrict__ k2a_out,
                                        float* __restrict__ k2prime_out, float* __restrict__ wrss_out,
                                        unsigned char* __restrict__ status) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* yi = y + i * (long long)f;
    int finite = 1;
    const double yy = vk_weighted_ss(yi, wu, f, &finite);
    const double c0 = finite ? vk_project(yi, zt, 0, f) : 0.0;
    unsigned char st = VK_OK;
    if (!finite || !isfinite(c0)) st = VK_NONFINITE;
    else if (!(c0 > 0.0)) st = VK_NONPOSITIVE;
    if (st != VK_OK) {
        const float nan = __int_as_float(0x7fc00000);
        status[i] = st;
        bp_nd[i] = nan; r1_out[i] = nan; k2_out[i] = nan; k2a_out[i] = nan; k2prime_out[i] = nan;
        wrss_out[i] = nan;
        return;
    }
    const int best = vk_best(p + i * (long long)(nb + 1), nb, 1);
    const int edge = (best == 0 || best == nb - 1);
    const int c = best < 2 ? 2 : (best > nb - 3 ? nb - 3 : best);
    double s5[5], w[5];
    for (int k = 0; k < 5; ++k) s5[k] = vk_project(yi, zt, c - 2 + k + 1, f);
    const double t = vk_refine(s5, (double)(best - c), refine && !edge, m5, w);
    double s = 0.0, r1 = 0.0;
    for (int k = 0; k < 5; ++k) {
        s += w[k] * s5[k];
        r1 += w[k] * (s5[k] / xnorm[c - 2 + k]);
    }
    const double k2a = thetas[c] * exp(t * log_step);
    double wrss = yy - s * s;
    if (wrss < 0.0) wrss = 0.0;
    const double k2 = r1 * k2prime;
    if (r1 <= 0.0) st = VK_IMPLAUSIBLE;
    else if (edge) st = VK_GRID_EDGE;
    status[i] = st;
    bp_nd[i] = (float)(k2 / k2a - 1.0);
    r1_out[i] = (float)r1;
    k2_out[i] = (float)k2;
    k2a_out[i] = (float)k2a;
    k2prime_out[i] = (float)k2prime;
    wrss_out[i] = (float)wrss;
}
