// Non-invasive Logan plot, one voxel per thread.
// Inputs (row-major): tacs[n x f] float32 activity; ca[f], cb[f] running-integral coefficients
// (minutes, double): R[0] = cb[0] C[0], R[j] = R[j-1] + ca[j] C[j-1] + cb[j] C[j], plus a local term
// (models/base.py, model_integration): I[j] = R[j] + cm[j] C[j-1] + c0[j] C[j] + cp[j] C[j+1];
// ref_term[f] = int_0^t Cr (+ Cr/k2') (double); w[f] regression weights (double, 0 = unused);
// used[f] 1 if the frame enters the regression.  Only frames 0..n_needed-1 are read.
// Outputs: bp_nd, dvr, intercept, wrss (weighted residual sum of squares of the Logan-plot line, minutes^2)
// (float32, NaN when status != 0), status (uint8, see models/status.py).

#define VK_OK 0
#define VK_SINGULAR 2
#define VK_NONFINITE 3
#define VK_NONPOSITIVE 4

extern "C" __global__ void logan_fit(const float* __restrict__ tacs, const double* __restrict__ ca,
                                     const double* __restrict__ cb, const double* __restrict__ cm,
                                     const double* __restrict__ c0, const double* __restrict__ cp,
                                     const double* __restrict__ ref_term, const double* __restrict__ w,
                                     const unsigned char* __restrict__ used, const int n, const int f,
                                     const int n_needed, float* __restrict__ bp_nd,
                                     float* __restrict__ dvr, float* __restrict__ intercept,
                                     float* __restrict__ wrss, unsigned char* __restrict__ status) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* c = tacs + i * (long long)f;
    double running = 0.0, prev_c = 0.0;
    double sw = 0.0, sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0, syy = 0.0;
    int finite = 1, positive = 1;
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
        if (cj <= 0.0) { positive = 0; continue; }
        const double x = ref_term[j] / cj;
        const double y = integral / cj;
        const double wj = w[j];
        sw += wj; sx += wj * x; sy += wj * y; sxx += wj * x * x; sxy += wj * x * y; syy += wj * y * y;
    }
    unsigned char st = VK_OK;
    double slope = 0.0, b = 0.0;
    if (!finite) {
        st = VK_NONFINITE;
    } else if (!positive) {
        st = VK_NONPOSITIVE;
    } else {
        const double det = sw * sxx - sx * sx;
        const double scale = sw * sxx;
        if (!(fabs(det) > 1e-12 * (scale > 0.0 ? scale : 1.0))) {
            st = VK_SINGULAR;
        } else {
            slope = (sw * sxy - sx * sy) / det;
            b = (sxx * sy - sx * sxy) / det;
        }
    }
    status[i] = st;
    if (st == VK_OK) {
        dvr[i] = (float)slope;
        bp_nd[i] = (float)(slope - 1.0);
        intercept[i] = (float)b;
        const double rss = syy - slope * sxy - b * sy;
        wrss[i] = (float)(rss > 0.0 ? rss : 0.0);
    } else {
        const float nan = __int_as_float(0x7fc00000);
        dvr[i] = nan; bp_nd[i] = nan; intercept[i] = nan; wrss[i] = nan;
    }
}
