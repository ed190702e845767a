// MRTM / MRTM2 (Ichise 2003), one voxel per thread: the same block-eliminated weighted least squares as
// voxelkit/models/mrtm.py, in double.
// Regression over used frames:  Ct = gs0 * x1 + gs1 * x3 + g2 * I,  I = running integral of the voxel's Ct.
//   MRTM : x1 = int Cr, x3 = Cr (p = 2)             -> BPND = -gs0/g2 - 1, R1 = gs1, k2 = gs0, k2' = gs0/gs1
//   MRTM2: x1 = int Cr + Cr/k2', x3 unused (p = 1)  -> BPND = -gs0/g2 - 1, k2 = gs0, R1 = gs0/k2', k2' fixed
// Inputs (row-major): tacs[n x f] float32; ca[f], cb[f] running-integral coefficients (minutes, double):
// R[0] = cb[0] C[0], R[j] = R[j-1] + ca[j] C[j-1] + cb[j] C[j], plus a local term (models/base.py,
// model_integration): I[j] = R[j] + cm[j] C[j-1] + c0[j] C[j] + cp[j] C[j+1]; x1[f], x3[f] shared columns;
// w[f] weights (0 outside the window); used[f]; ginv[4] = inverse weighted Gram matrix of the shared columns
// (row-major 2x2, zero-padded for p = 1); k2p = fixed k2' (1/min, MRTM2 only).  Frames 0..n_needed-1 are read.
// Outputs: bp_nd, r1, k2, k2prime, wrss (float32, NaN for status 2/3), status (uint8, models/status.py):
// 3 non-finite input; 2 int Ct in the span of the shared columns (or non-finite BPND); 6 k2a <= 0, k2 <= 0
// or (MRTM) R1 <= 0 (values kept); 0 ok.

#define VK_OK 0
#define VK_SINGULAR 2
#define VK_NONFINITE 3
#define VK_IMPLAUSIBLE 6
#define VK_SINGULAR_RTOL 1e-10

extern "C" __global__ void mrtm_fit(const float* __restrict__ tacs, const double* __restrict__ ca,
                                    const double* __restrict__ cb, const double* __restrict__ cm,
                                    const double* __restrict__ c0, const double* __restrict__ cp,
                                    const double* __restrict__ x1,
                                    const double* __restrict__ x3, const double* __restrict__ w,
                                    const unsigned char* __restrict__ used, const double* __restrict__ ginv,
                                    const int n, const int f, const int n_needed, const int p, const double k2p,
                                    float* __restrict__ bp_nd, float* __restrict__ r1, float* __restrict__ k2,
                                    float* __restrict__ k2prime, float* __restrict__ wrss,
                                    unsigned char* __restrict__ status) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* c = tacs + i * (long long)f;
    double running = 0.0, prev_c = 0.0;
    double sy0 = 0.0, sy1 = 0.0, sx0 = 0.0, sx1 = 0.0, sii = 0.0, siy = 0.0, syy = 0.0;
    int finite = 1;
    for (int j = 0; j < n_needed; ++j) {
        if (!isfinite(c[j])) { finite = 0; break; }
    }
    for (int j = 0; finite && j < n_needed; ++j) {
        const double cj = (double)c[j];
        running += ca[j] * prev_c + cb[j] * cj;
        const double next_c = (j + 1 < n_needed) ? (double)c[j + 1] : 0.0;
        const double integral = running + cm[j] * prev_c + c0[j] * cj + cp[j] * next_c;
        prev_c = cj;
        if (!used[j]) continue;
        const double wj = w[j];
        const double a = wj * x1[j];
        sy0 += a * cj;
        sx0 += a * integral;
        if (p > 1) {
            const double b = wj * x3[j];
            sy1 += b * cj;
            sx1 += b * integral;
        }
        sii += wj * integral * integral;
        siy += wj * integral * cj;
        syy += wj * cj * cj;
    }
    unsigned char st = VK_OK;
    double g1 = 0.0, g3 = 0.0, g2 = 0.0, rss = 0.0, bp = 0.0;
    if (!finite) {
        st = VK_NONFINITE;
    } else {
        const double gsx0 = sx0 * ginv[0] + sx1 * ginv[2];
        const double gsx1 = sx0 * ginv[1] + sx1 * ginv[3];
        const double gsy0 = sy0 * ginv[0] + sy1 * ginv[2];
        const double gsy1 = sy0 * ginv[1] + sy1 * ginv[3];
        const double den = sii - (gsx0 * sx0 + gsx1 * sx1);
        const double num = siy - (gsx0 * sy0 + gsx1 * sy1);
        if (!(den > VK_SINGULAR_RTOL * sii)) {
            st = VK_SINGULAR;
        } else {
            g2 = num / den;
            g1 = gsy0 - g2 * gsx0;
            g3 = gsy1 - g2 * gsx1;
            rss = (syy - (gsy0 * sy0 + gsy1 * sy1)) - g2 * num;
            if (rss < 0.0) rss = 0.0;
            if (g2 != 0.0) bp = -(g1 / g2) - 1.0;
            if (g2 == 0.0 || !isfinite(bp)) {
                st = VK_SINGULAR;
            } else if (g2 >= 0.0 || g1 <= 0.0 || (p > 1 && g3 <= 0.0)) {
                st = VK_IMPLAUSIBLE;
            }
        }
    }
    status[i] = st;
    if (st == VK_OK || st == VK_IMPLAUSIBLE) {
        bp_nd[i] = (float)bp;
        k2[i] = (float)g1;
        wrss[i] = (float)rss;
        if (p > 1) {
            r1[i] = (float)g3;
            k2prime[i] = (g3 != 0.0) ? (float)(g1 / g3) : __int_as_float(0x7fc00000);
        } else {
            r1[i] = (float)(g1 / k2p);
            k2prime[i] = (float)k2p;
        }
    } else {
        const float nan = __int_as_float(0x7fc00000);
        bp_nd[i] = nan; r1[i] = nan; k2[i] = nan; k2prime[i] = nan; wrss[i] = nan;
    }
}
