// lp-ntPET (Normandin 2012), final fit at the chosen basis function, one voxel per thread: the same float64
// arithmetic as voxelkit/models/lpntpet.py (_final_xp).  The choice of the basis function (float32 products
// over all basis functions, cuBLAS through CuPy) is done before; best[i] is its index (-1: no release term).
// Regression over used frames:  Ct = gs0 * x1 + gs1 * x3 + gI * I + gR * R,
//   I = running integral of Ct, R = running integral of Ct * h_best (h: frame means of the release shape).
//   lpntpet : x1 = int Cr, x3 = Cr (p = 2)            -> k2 = gs0, R1 = gs1, k2' = k2 / R1
//   lpntpet2: x1 = int Cr + Cr/k2', x3 unused (p = 1) -> k2 = gs0, R1 = k2 / k2', k2' fixed
//   k2a = -gI, gamma = -gR, BPND = k2/k2a - 1, release = 1 - (k2/(k2a+gamma) - 1) / BPND.
// Solved by block elimination (Frisch-Waugh): shared columns projected out with their inverse weighted Gram
// matrix ginv (2x2 row-major, zero-padded for p = 1), then int Ct (MRTM's fit, RSS0), then R (RSS1).
// F = ((RSS0 - RSS1)/(p_eff - p0)) / (RSS1/(n_obs - p_eff)).
// Inputs (row-major): tacs[n x f] float32; h[J x n_needed] double; ca, cb, cm, c0, cp[f] running-integral
// coefficients (minutes; models/base.py model_integration): R[0] = cb[0] C[0], R[j] = R[j-1] + ca[j] C[j-1]
// + cb[j] C[j], I[j] = R[j] + cm[j] C[j-1] + c0[j] C[j] + cp[j] C[j+1]; x1, x3[f]; w[f] weights (0 outside
// the window); used[f]; edge[J] (1: basis function on a grid edge); td, tp, al[J] (minutes, minutes, -).
// Status (models/status.py): 3 non-finite input, 2 singular (NaN values); 6 k2a <= 0, k2 <= 0, R1 <= 0 or
// k2a + gamma <= 0, 5 release term above f_thr with an edge basis function (values kept); 0 ok.

#define VK_OK 0
#define VK_SINGULAR 2
#define VK_NONFINITE 3
#define VK_GRID_EDGE 5
#define VK_IMPLAUSIBLE 6
#define VK_SINGULAR_RTOL 1e-10

extern "C" __global__ void lpntpet_fit(const float* __restrict__ tacs, const int* __restrict__ best,
                                       const double* __restrict__ h, const double* __restrict__ ca,
                                       const double* __restrict__ cb, const double* __restrict__ cm,
                                       const double* __restrict__ c0, const double* __restrict__ cp,
                                       const double* __restrict__ x1, const double* __restrict__ x3,
                                       const double* __restrict__ w, const unsigned char* __restrict__ used,
                                       const double* __restrict__ ginv, const unsigned char* __restrict__ edge,
                                       const double* __restrict__ td, const double* __restrict__ tp,
                                       const double* __restrict__ al, const int n, const int f,
                                       const int n_needed, const int p, const int nonnegative, const double k2p,
                                       const double n_obs, const double p0, const double p_eff,
                                       const double f_thr, float* __restrict__ bp_nd, float* __restrict__ r1,
                                       float* __restrict__ k2, float* __restrict__ k2prime,
                                       float* __restrict__ k2a, float* __restrict__ gamma,
                                       float* __restrict__ t_d, float* __restrict__ t_p,
                                       float* __restrict__ alpha, float* __restrict__ release,
                                       float* __restrict__ f_stat, float* __restrict__ wrss,
                                       unsigned char* __restrict__ status) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* c = tacs + i * (long long)f;
    const int bj = best[i];
    const int has = bj >= 0;
    const double* hj = h + (long long)(has ? bj : 0) * n_needed;
    const float nanf = __int_as_float(0x7fc00000);
    int finite = 1;
    for (int j = 0; j < n_needed; ++j) {
        if (!isfinite(c[j])) { finite = 0; break; }
    }
    // weighted sums: s*[0..1] = x1/x3 projections of y, I, R; raw inner products
    double sy0 = 0.0, sy1 = 0.0, si0 = 0.0, si1 = 0.0, sr0 = 0.0, sr1 = 0.0;
    double ii = 0.0, ir = 0.0, rr = 0.0, iy = 0.0, ry = 0.0, yy = 0.0;
    double run_i = 0.0, run_r = 0.0, prev_c = 0.0, prev_q = 0.0;
    for (int j = 0; finite && j < n_needed; ++j) {
        const double cj = (double)c[j];
        const double hv = has ? hj[j] : 0.0;
        const double qj = cj * hv;
        run_i += ca[j] * prev_c + cb[j] * cj;
        run_r += ca[j] * prev_q + cb[j] * qj;
        const int nx = j + 1 < n_needed;
        const double next_c = nx ? (double)c[j + 1] : 0.0;
        const double next_q = nx ? (double)c[j + 1] * (has ? hj[j + 1] : 0.0) : 0.0;
        const double vi = run_i + cm[j] * prev_c + c0[j] * cj + cp[j] * next_c;
        const double vr = run_r + cm[j] * prev_q + c0[j] * qj + cp[j] * next_q;
        prev_c = cj;
        prev_q = qj;
        if (!used[j]) continue;
        const double wj = w[j];
        const double a1 = wj * x1[j];
        sy0 += a1 * cj;
        si0 += a1 * vi;
        sr0 += a1 * vr;
        if (p > 1) {
            const double a3 = wj * x3[j];
            sy1 += a3 * cj;
            si1 += a3 * vi;
            sr1 += a3 * vr;
        }
        ii += wj * vi * vi;
        ir += wj * vi * vr;
        rr += wj * vr * vr;
        iy += wj * vi * cj;
        ry += wj * vr * cj;
        yy += wj * cj * cj;
    }
    // projected inner products <X, Y>_A = <X, Y>_W - sX' G sY
    const double g00 = ginv[0], g01 = ginv[1], g10 = ginv[2], g11 = ginv[3];
#define VK_Q(a0, a1, b0, b1) ((a0) * (g00 * (b0) + g01 * (b1)) + (a1) * (g10 * (b0) + g11 * (b1)))
    const double a = ii - VK_Q(si0, si1, si0, si1);
    const double bb = ir - VK_Q(si0, si1, sr0, sr1);
    const double cc = rr - VK_Q(sr0, sr1, sr0, sr1);
    const double d = iy - VK_Q(si0, si1, sy0, sy1);
    const double e = ry - VK_Q(sr0, sr1, sy0, sy1);
    const double yyp = yy - VK_Q(sy0, sy1, sy0, sy1);
    unsigned char st = VK_OK;
    if (!finite) {
        st = VK_NONFINITE;
    } else if (!(a > VK_SINGULAR_RTOL * ii)) {
        st = VK_SINGULAR;
    }
    double v_bp = 0.0, v_r1 = 0.0, v_k2 = 0.0, v_k2p = 0.0, v_k2a = 0.0, v_gam = 0.0, v_rel = 0.0;
    double v_f = 0.0, v_rss = 0.0;
    int rel = 0;
    if (st == VK_OK) {
        const double g0 = d / a;
        double rss0 = yyp - g0 * d;
        if (rss0 < 0.0) rss0 = 0.0;
        const double cres = cc - bb * bb / a;
        const double eres = e - bb * d / a;
        rel = has && (cres > VK_SINGULAR_RTOL * rr);
        double g_r = rel ? eres / cres : 0.0;
        if (nonnegative && !(g_r < 0.0)) { rel = 0; g_r = 0.0; }
        const double g_i = g0 - g_r * bb / a;
        double rss1 = rel ? rss0 - g_r * eres : rss0;
        if (rss1 < 0.0) rss1 = 0.0;
        const double q0 = sy0 - si0 * g_i - sr0 * g_r;
        const double q1 = sy1 - si1 * g_i - sr1 * g_r;
        const double gs0 = q0 * g00 + q1 * g10;
        const double gs1 = q0 * g01 + q1 * g11;
        v_k2a = -g_i;
        v_gam = -g_r;
        v_k2 = gs0;
        if (p > 1) {
            v_r1 = gs1;
            v_k2p = gs0 / gs1;
        } else {
            v_r1 = gs0 / k2p;
            v_k2p = k2p;
        }
        v_bp = v_k2 / v_k2a - 1.0;
        const double bp_p = v_k2 / (v_k2a + v_gam) - 1.0;
        v_rel = rel ? 1.0 - bp_p / v_bp : 0.0;
        v_f = rel ? ((rss0 - rss1) / (p_eff - p0)) / (rss1 / (n_obs - p_eff)) : 0.0;
        v_rss = rss1;
        if (!isfinite(v_bp)) {
            st = VK_SINGULAR;
        } else if (v_k2a <= 0.0 || v_k2 <= 0.0 || v_r1 <= 0.0 || v_k2a + v_gam <= 0.0) {
            st = VK_IMPLAUSIBLE;
        } else if (rel && edge[bj] && v_f >= f_thr) {
            st = VK_GRID_EDGE;
        }
    }
    status[i] = st;
    if (st == VK_NONFINITE || st == VK_SINGULAR) {
        bp_nd[i] = nanf; r1[i] = nanf; k2[i] = nanf; k2prime[i] = nanf; k2a[i] = nanf; gamma[i] = nanf;
        t_d[i] = nanf; t_p[i] = nanf; alpha[i] = nanf; release[i] = nanf; f_stat[i] = nanf; wrss[i] = nanf;
        return;
    }
    bp_nd[i] = (float)v_bp;
    r1[i] = (float)v_r1;
    k2[i] = (float)v_k2;
    k2prime[i] = (float)v_k2p;
    k2a[i] = (float)v_k2a;
    gamma[i] = (float)v_gam;
    release[i] = (float)v_rel;
    f_stat[i] = (float)v_f;
    wrss[i] = (float)v_rss;
    const int show = nonnegative ? rel : has;
    t_d[i] = show ? (float)td[bj] : nanf;
    t_p[i] = show ? (float)tp[bj] : nanf;
    alpha[i] = show ? (float)al[bj] : nanf;
#undef VK_Q
}
