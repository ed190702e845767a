// Basis-function SRTM / SRTM2: choice of the best basis function and parameters, one voxel per thread.
// The projections p = (w * Ct) @ Z (n x (nb+1), float32) come from a cuBLAS GEMM (CuPy matmul); these kernels
// replace the (voxels x basis) temporaries of the NumPy path (voxelkit/models/srtm.py: srtm_select_xp and
// srtm2_select_xp, same math) by a loop over the basis functions per voxel.
// Inputs: y[n x f] float32 fitted-frame TACs (row-major), wu[f] frame weights (double), p[n x (nb+1)] float32
// (column 0: c0 = <Ct, Cr>_w / |Cr|_w; columns 1..nb: q_j or s_j), thetas[nb] grid (1/min, log-spaced with
// step log_step), refine 1 = parabolic refinement between grid points.
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

// parabola through (-1, sm), (0, s0), (1, sp): vertex offset t (|t| <= 0.5) and vertex value
__device__ double vk_parabola(double sm, double s0, double sp, int use, double* s_star) {
    const double d = sm - 2.0 * s0 + sp;
    double t = 0.0;
    if (use && d < 0.0) t = (sm - sp) / (2.0 * d);
    if (t > 0.5) t = 0.5;
    if (t < -0.5) t = -0.5;
    *s_star = s0 - 0.5 * d * t * t;
    return t;
}

__device__ double vk_lagrange(double t, double vm, double v0, double vp) {
    return 0.5 * t * (t - 1.0) * vm + (1.0 - t * t) * v0 + 0.5 * t * (t + 1.0) * vp;
}

extern "C" __global__ void srtm_select(const float* __restrict__ y, const double* __restrict__ wu,
                                       const float* __restrict__ p, const double* __restrict__ thetas,
                                       const double* __restrict__ alpha, const double* __restrict__ beta,
                                       const double gamma, const double log_step, const int n, const int f,
                                       const int nb, const int refine, float* __restrict__ bp_nd,
                                       float* __restrict__ r1_out, float* __restrict__ k2_out,
                                       float* __restrict__ k2prime_out, float* __restrict__ theta3_out,
                                       float* __restrict__ wrss_out, unsigned char* __restrict__ status) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int finite = 1;
    const double yy = vk_weighted_ss(y + i * (long long)f, wu, f, &finite);
    const float* row = p + i * (long long)(nb + 1);
    const double c0 = (double)row[0];
    // best basis: largest |q_j| (first one on ties, as numpy.argmax)
    int best = 0;
    float amax = fabsf(row[1]);
    for (int j = 1; j < nb; ++j) {
        const float a = fabsf(row[1 + j]);
        if (a > amax) { amax = a; best = j; }
    }
    const int edge = (best == 0 || best == nb - 1);
    const int im = best > 0 ? best - 1 : 0;
    const int ip = best < nb - 1 ? best + 1 : nb - 1;
    const double q0 = (double)row[1 + best], qm = (double)row[1 + im], qp = (double)row[1 + ip];
    const double t2_0 = q0 / beta[best];
    const double r1_0 = (c0 - t2_0 * alpha[best]) / gamma;
    double r1, t2, theta3, s_star;
    if (refine) {
        const double t = vk_parabola(qm * qm, q0 * q0, qp * qp, !edge, &s_star);
        const double t2_m = qm / beta[im], t2_p = qp / beta[ip];
        const double r1_m = (c0 - t2_m * alpha[im]) / gamma, r1_p = (c0 - t2_p * alpha[ip]) / gamma;
        r1 = vk_lagrange(t, r1_m, r1_0, r1_p);
        t2 = vk_lagrange(t, t2_m, t2_0, t2_p);
        theta3 = thetas[best] * exp(t * log_step);
    } else {
        s_star = q0 * q0; r1 = r1_0; t2 = t2_0; theta3 = thetas[best];
    }
    double wrss = yy - c0 * c0 - s_star;
    if (wrss < 0.0) wrss = 0.0;
    const double k2 = t2 + r1 * theta3;
    unsigned char st = VK_OK;
    if (!finite || !isfinite(c0)) st = VK_NONFINITE;
    else if (!(c0 > 0.0)) st = VK_NONPOSITIVE;
    else if (r1 <= 0.0 || k2 <= 0.0) st = VK_IMPLAUSIBLE;
    else if (edge) st = VK_GRID_EDGE;
    status[i] = st;
    if (st == VK_NONFINITE || st == VK_NONPOSITIVE) {
        const float nan = __int_as_float(0x7fc00000);
        bp_nd[i] = nan; r1_out[i] = nan; k2_out[i] = nan; k2prime_out[i] = nan; theta3_out[i] = nan;
        wrss_out[i] = nan;
        return;
    }
    bp_nd[i] = (float)(k2 / theta3 - 1.0);
    r1_out[i] = (float)r1;
    k2_out[i] = (float)k2;
    k2prime_out[i] = (float)(k2 / r1);
    theta3_out[i] = (float)theta3;
    wrss_out[i] = (float)wrss;
}

// SRTM2: p columns 1..nb hold s_j = <Ct, X_j>_w / |X_j|_w with X_j = Cr + (k2' - k2a_j) B_j; R1_j = s_j / xnorm_j.
extern "C" __global__ void srtm2_select(const float* __restrict__ y, const double* __restrict__ wu,
                                        const float* __restrict__ p, const double* __restrict__ thetas,
                                        const double* __restrict__ xnorm, const double k2prime,
                                        const double log_step, const int n, const int f, const int nb,
                                        const int refine, float* __restrict__ bp_nd, float* __restrict__ r1_out,
                                        float* __restrict__ k2_out, float* __restrict__ k2a_out,
                                        float* __restrict__ k2prime_out, float* __restrict__ wrss_out,
                                        unsigned char* __restrict__ status) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int finite = 1;
    const double yy = vk_weighted_ss(y + i * (long long)f, wu, f, &finite);
    const float* row = p + i * (long long)(nb + 1);
    const double c0 = (double)row[0];
    int best = 0;
    float smax = row[1];
    for (int j = 1; j < nb; ++j) {
        const float s = row[1 + j];
        if (s > smax) { smax = s; best = j; }
    }
    const int edge = (best == 0 || best == nb - 1);
    const int im = best > 0 ? best - 1 : 0;
    const int ip = best < nb - 1 ? best + 1 : nb - 1;
    const double s0 = (double)row[1 + best], sm = (double)row[1 + im], sp = (double)row[1 + ip];
    const double r1_0 = s0 / xnorm[best];
    double r1, k2a, s_star;
    if (refine) {
        const double t = vk_parabola(sm * sm, s0 * s0, sp * sp, !edge && sm > 0.0 && sp > 0.0, &s_star);
        r1 = vk_lagrange(t, sm / xnorm[im], r1_0, sp / xnorm[ip]);
        k2a = thetas[best] * exp(t * log_step);
    } else {
        s_star = s0 * s0; r1 = r1_0; k2a = thetas[best];
    }
    double wrss = yy - s_star;
    if (wrss < 0.0) wrss = 0.0;
    const double k2 = r1 * k2prime;
    unsigned char st = VK_OK;
    if (!finite || !isfinite(c0)) st = VK_NONFINITE;
    else if (!(c0 > 0.0)) st = VK_NONPOSITIVE;
    else if (r1 <= 0.0) st = VK_IMPLAUSIBLE;
    else if (edge) st = VK_GRID_EDGE;
    status[i] = st;
    if (st == VK_NONFINITE || st == VK_NONPOSITIVE) {
        const float nan = __int_as_float(0x7fc00000);
        bp_nd[i] = nan; r1_out[i] = nan; k2_out[i] = nan; k2a_out[i] = nan; k2prime_out[i] = nan;
        wrss_out[i] = nan;
        return;
    }
    bp_nd[i] = (float)(k2 / k2a - 1.0);
    r1_out[i] = (float)r1;
    k2_out[i] = (float)k2;
    k2a_out[i] = (float)k2a;
    k2prime_out[i] = (float)k2prime;
    wrss_out[i] = (float)wrss;
}
