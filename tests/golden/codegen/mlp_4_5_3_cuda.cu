// Graph mlp, compiled by bngraph 0.1.0 for CUDA (float32).
//
// Generated code: do not edit. Regenerate with `bngraph emit --target cuda`.
// One kernel per IR node (a reduction over several blocks adds one or two: `_partial` and
// `_combine`, `_weights` and `_total`); the comment above each is the node as `print(graph)` shows
// it. Matrix products are cuBLAS calls in the host driver (mlp_cuda.py), not kernels.
// Layout: activations are (features, m) row-major: one unit's batch is one contiguous row of m.
// Every kernel loops grid-stride (over elements, or over rows for per-unit work), so any launch
// grid computes the same numbers; reductions accumulate in double (acc_t).
// A reduction too big for one block (a loss, a unit's row cut into segments) runs as two launches:
// each block sums its part and writes the partial sum into `scratch` (the model's own small device
// array, 2*PARTS doubles), then a second launch adds the partial sums in a fixed order: the same
// bits whatever order the blocks ran in.
typedef float real;
typedef double acc_t;
#define BLOCK 256
#define PARTS 4096  // partial sums of one reduction: scratch[0, PARTS) and scratch[PARTS, 2*PARTS)
#ifndef BN_CACHE
#define BN_CACHE 16  // batch-norm kernels keep rows of up to BN_CACHE*blockDim.x examples in registers
#endif
#if !defined(__CUDACC__) && !defined(__launch_bounds__)  // a host compiler: a GPU's register budget means nothing
#define __launch_bounds__(...)
#endif

// The sum of v over the threads of one block (blockDim.x a power of two, at most BLOCK).
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    const acc_t r = red[0];
    __syncthreads();
    return r;
}

// The sum of n partial sums written by an earlier launch: each thread adds its share in a fixed
// order, then block_sum. Every block that calls it gets the same bits.
__device__ __forceinline__ acc_t sum_parts(const acc_t* parts, int n, acc_t* red) {
    acc_t v = 0;
    for (int k = threadIdx.x; k < n; k += blockDim.x) v += parts[k];
    return block_sum(v, red);
}

// Part p of n items cut into `parts` near-equal parts starts at item part_start(n, p, parts) and
// ends before part_start(n, p + 1, parts).
__device__ __forceinline__ long long part_start(long long n, int p, int parts) {
    return n * p / parts;
}

// ======== train_step ========

// %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
// One block per unit: the batch mean, the variance around it (two passes, in double), then
// y = relu(z*s + t) with s = gamma/sqrt(var + eps), t = beta - mean*s. A row of at most
// BN_CACHE*blockDim.x examples is read once and kept in registers for the three passes; a longer
// row is read three times. Both paths take each thread's elements j = threadIdx.x + k*blockDim.x
// in the same order, so they give the same bits. Launch bounds: at most 64 registers a thread, so
// four blocks of BLOCK threads (a whole SM's 2048) fit an SM without spilling the row.
extern "C" __global__ void __launch_bounds__(BLOCK, 4) train_step__act1(const real* __restrict__ z, const real* __restrict__ gamma, const real* __restrict__ beta, real* __restrict__ y, real* __restrict__ mean, real* __restrict__ var_out, int m) {
    __shared__ acc_t red[BLOCK];
    const bool cached = m <= BN_CACHE * (int)blockDim.x;
    for (int r = blockIdx.x; r < 5; r += gridDim.x) {
        const real* zr = z + (long long)r * m;
        real* yr = y + (long long)r * m;
        real zc[BN_CACHE];
        acc_t sum = 0;  // the block's stretch zr[0, m): its sum, its mean mu, then m2 = sum of (z - mu)^2
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                const int j = threadIdx.x + k * blockDim.x;
                if (j < m) { zc[k] = zr[j]; sum += zc[k]; }
            }
        } else {
            for (int j = threadIdx.x; j < m; j += blockDim.x) sum += zr[j];
        }
        sum = block_sum(sum, red);
        const acc_t mu = sum / m;
        acc_t sq = 0;
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                if (threadIdx.x + k * blockDim.x < m) { const acc_t d = zc[k] - mu; sq += d * d; }
            }
        } else {
            for (int j = threadIdx.x; j < m; j += blockDim.x) { const acc_t d = zr[j] - mu; sq += d * d; }
        }
        const acc_t m2 = block_sum(sq, red);
        const acc_t var = m2 / m;  // batch variance (biased)
        const acc_t s = gamma[r] / sqrt(var + 1e-05);
        const acc_t t = beta[r] - mu * s;
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                const int j = threadIdx.x + k * blockDim.x;
                if (j < m) {
                    const real x = (real)(zc[k] * s + t);
                    yr[j] = (x < (real)0 ? (real)0 : x);
                }
            }
        } else {
            for (int j = threadIdx.x; j < m; j += blockDim.x) {
                const real x = (real)(zr[j] * s + t);
                yr[j] = (x < (real)0 ? (real)0 : x);
            }
        }
        if (threadIdx.x == 0) { mean[r] = (real)mu; var_out[r] = (real)var; }
    }
}

// %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
// Rows cut into `segs` segments, a block each (few units, or rows longer than a block keeps in
// registers), first pass: segment (r, seg) writes its sum into scratch[r*segs + seg] and the sum of
// its squared deviations around its own mean into scratch[PARTS + r*segs + seg].
extern "C" __global__ void __launch_bounds__(BLOCK, 4) train_step__act1_partial(const real* __restrict__ z, acc_t* __restrict__ scratch, int m, int segs) {
    __shared__ acc_t red[BLOCK];
    for (int p = blockIdx.x; p < 5 * segs; p += gridDim.x) {
        const int r = p / segs, seg = p % segs, lo = (int)part_start(m, seg, segs);
        const int n = (int)part_start(m, seg + 1, segs) - lo;  // examples [lo, lo + n) of unit r
        const real* zr = z + (long long)r * m + lo;
        const bool cached = n <= BN_CACHE * (int)blockDim.x;
        real zc[BN_CACHE];
        acc_t sum = 0;  // the block's stretch zr[0, n): its sum, its mean mu, then m2 = sum of (z - mu)^2
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                const int j = threadIdx.x + k * blockDim.x;
                if (j < n) { zc[k] = zr[j]; sum += zc[k]; }
            }
        } else {
            for (int j = threadIdx.x; j < n; j += blockDim.x) sum += zr[j];
        }
        sum = block_sum(sum, red);
        const acc_t mu = sum / n;
        acc_t sq = 0;
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                if (threadIdx.x + k * blockDim.x < n) { const acc_t d = zc[k] - mu; sq += d * d; }
            }
        } else {
            for (int j = threadIdx.x; j < n; j += blockDim.x) { const acc_t d = zr[j] - mu; sq += d * d; }
        }
        const acc_t m2 = block_sum(sq, red);
        if (threadIdx.x == 0) { scratch[p] = sum; scratch[PARTS + p] = m2; }
    }
}

// %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
// Second pass: every block of unit r adds up the unit's segments in the same order: the batch mean
// mu = (sum of the segments' sums) / m, the variance from the squared deviations around mu, each
// segment's own plus n*(its mean - mu)^2 (exact, no cancellation); then y over its own segment.
// The unit's first segment writes the statistics.
extern "C" __global__ void train_step__act1_combine(const real* __restrict__ z, const real* __restrict__ gamma, const real* __restrict__ beta, real* __restrict__ y, real* __restrict__ mean, real* __restrict__ var_out, const acc_t* __restrict__ scratch, int m, int segs) {
    __shared__ acc_t red[BLOCK];
    for (int p = blockIdx.x; p < 5 * segs; p += gridDim.x) {
        const int r = p / segs, seg = p % segs;
        const acc_t* sums = scratch + r * segs;
        const acc_t* m2s = scratch + PARTS + r * segs;
        const acc_t mu = sum_parts(sums, segs, red) / m;  // batch mean
        acc_t sq = 0;
        for (int k = threadIdx.x; k < segs; k += blockDim.x) {
            const int n = (int)(part_start(m, k + 1, segs) - part_start(m, k, segs));
            if (n > 0) { const acc_t d = sums[k] / n - mu; sq += m2s[k] + n * d * d; }
        }
        const acc_t var = block_sum(sq, red) / m;  // batch variance (biased)
        const acc_t s = gamma[r] / sqrt(var + 1e-05);
        const acc_t t = beta[r] - mu * s;
        const long long o = (long long)r * m, end = o + part_start(m, seg + 1, segs);
        for (long long i = o + part_start(m, seg, segs) + threadIdx.x; i < end; i += blockDim.x) {
            const real x = (real)(z[i] * s + t);
            y[i] = (x < (real)0 ? (real)0 : x);
        }
        if (seg == 0 && threadIdx.x == 0) { mean[r] = (real)mu; var_out[r] = (real)var; }
    }
}

// %bn1.running_mean.next: f32[5], %bn1.running_var.next: f32[5] = running_update[momentum=0.1] %bn1.running_mean, %bn1.running_var, %bn1.mean, %bn1.var, %fc1.matmul
// running = (1 - momentum)*running + momentum*batch_stat; the variance uses the unbiased var*m/(m-1).
extern "C" __global__ void train_step__bn1_running_mean_next(const real* __restrict__ running_mean, const real* __restrict__ running_var, const real* __restrict__ mean, const real* __restrict__ var, real* __restrict__ running_mean_next, real* __restrict__ running_var_next, int m) {
    for (int u = blockIdx.x * blockDim.x + threadIdx.x; u < 5; u += gridDim.x * blockDim.x) {
        running_mean_next[u] = (real)((1 - 0.1) * running_mean[u] + 0.1 * (acc_t)mean[u]);
        running_var_next[u] = (real)((1 - 0.1) * running_var[u] + 0.1 * (acc_t)var[u] * m / (m - 1));
    }
}

// %out: f32[3,m] = bias_add %out.matmul, %out.b
extern "C" __global__ void train_step__out(const real* __restrict__ z, const real* __restrict__ b, real* __restrict__ y, int m) {
    const long long n = 3 * (long long)m;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / m;  // the unit (row) of element i
        const real x = z[i] + b[r];
        y[i] = x;
    }
}

// %loss: f32[], %out.grad: f32[3,m] = softmax_cross_entropy_and_grad %out, %y, %loss.grad
// Each thread takes examples j (column j of the logits); the batch is cut into `parts` parts,
// a block each (grid-stride):
// loss = mean over j of -log softmax(logits[:, j])[labels[j]],
// dlogits[:, j] = (softmax(logits[:, j]) - onehot(labels[j])) / m * dL.
// Each block writes the sum of its part's losses into scratch[part]; train_step__loss_total adds them up.
extern "C" __global__ void train_step__loss(const real* __restrict__ logits, const long long* __restrict__ labels, real* __restrict__ loss, real* __restrict__ dlogits, acc_t* __restrict__ scratch, int m, int parts) {
    __shared__ acc_t red[BLOCK];
    const acc_t wsum = m;  // every w_j is 1
    for (int part = blockIdx.x; part < parts; part += gridDim.x) {
        const int end = (int)part_start(m, part + 1, parts);
        acc_t total = 0;
        for (int j = (int)part_start(m, part, parts) + threadIdx.x; j < end; j += blockDim.x) {
            const long long label = labels[j];
            const acc_t w = 1;
            acc_t mx = logits[j];
            for (int c = 1; c < 3; ++c) mx = fmax(mx, (acc_t)logits[(long long)c * m + j]);
            acc_t se = 0;
            for (int c = 0; c < 3; ++c) se += exp(logits[(long long)c * m + j] - mx);
            const acc_t l = log(se) + mx - logits[label * m + j];
            total += w * l;
            const acc_t s = w * (1.0 / wsum);  // dL/dl_j
            for (int c = 0; c < 3; ++c) {
                const acc_t p = exp(logits[(long long)c * m + j] - mx) / se;
                dlogits[(long long)c * m + j] = (real)((p - (c == label ? 1 : 0)) * s);
            }
        }
        total = block_sum(total, red);
        if (threadIdx.x == 0) scratch[part] = total;
    }
}

// %loss: f32[], %out.grad: f32[3,m] = softmax_cross_entropy_and_grad %out, %y, %loss.grad
// loss = (the sum of the parts' sums, in a fixed order) / wsum: one block.
extern "C" __global__ void train_step__loss_total(real* __restrict__ loss, const acc_t* __restrict__ scratch, int m, int parts) {
    __shared__ acc_t red[BLOCK];
    if (blockIdx.x != 0) return;
    const acc_t wsum = m;  // every w_j is 1
    const acc_t total = sum_parts(scratch, parts, red);
    if (threadIdx.x == 0) loss[0] = (real)(total / wsum);
}

// %out.b.grad: f32[3] = sum_batch %out.grad
// One block per unit: s = sum(x, axis=batch).
extern "C" __global__ void train_step__out_b_grad(const real* __restrict__ x, real* __restrict__ s, int m) {
    __shared__ acc_t red[BLOCK];
    for (int r = blockIdx.x; r < 3; r += gridDim.x) {
        acc_t sum = 0;
        for (int j = threadIdx.x; j < m; j += blockDim.x) sum += x[(long long)r * m + j];
        sum = block_sum(sum, red);
        if (threadIdx.x == 0) s[r] = (real)sum;
    }
}

// %out.b.grad: f32[3] = sum_batch %out.grad
// Rows cut into `segs` segments, a block each (few units with long rows), first pass: segment
// (r, seg) writes its sum into scratch[r*segs + seg].
extern "C" __global__ void train_step__out_b_grad_partial(const real* __restrict__ x, acc_t* __restrict__ scratch, int m, int segs) {
    __shared__ acc_t red[BLOCK];
    for (int p = blockIdx.x; p < 3 * segs; p += gridDim.x) {
        const int r = p / segs, seg = p % segs;
        const long long o = (long long)r * m, end = o + part_start(m, seg + 1, segs);
        acc_t sum = 0;
        for (long long i = o + part_start(m, seg, segs) + threadIdx.x; i < end; i += blockDim.x) sum += x[i];
        sum = block_sum(sum, red);
        if (threadIdx.x == 0) scratch[p] = sum;
    }
}

// %out.b.grad: f32[3] = sum_batch %out.grad
// Second pass, a block per unit: s[r] = the sum of its segments' sums, in a fixed order.
extern "C" __global__ void train_step__out_b_grad_combine(real* __restrict__ s, const acc_t* __restrict__ scratch, int m, int segs) {
    __shared__ acc_t red[BLOCK];
    for (int r = blockIdx.x; r < 3; r += gridDim.x) {
        const acc_t sum = sum_parts(scratch + r * segs, segs, red);
        if (threadIdx.x == 0) s[r] = (real)sum;
    }
}

// %fc1.matmul.grad: f32[5,m], %bn1.gamma.grad: f32[5], %bn1.beta.grad: f32[5] = batchnorm_act_grad[act=relu, eps=1e-05, mode=train, negative_slope=0.0] %act1.grad, %act1, %fc1.matmul, %bn1.gamma, %bn1.mean, %bn1.var
// One block per unit: dbeta = sum(dy), dgamma = sum(dy*z_hat), then
// dz = (gamma*inv_std/m) * (m*dy - dbeta - z_hat*dgamma), with dy = da*relu'(a).
// A row of at most BN_CACHE*blockDim.x examples keeps its inputs in registers between the two
// passes (read once); a longer row is read twice. Same order, same bits, either way.
extern "C" __global__ void train_step__fc1_matmul_grad(const real* __restrict__ da, const real* __restrict__ a, const real* __restrict__ z, const real* __restrict__ gamma, const real* __restrict__ mean, const real* __restrict__ var, real* __restrict__ dz, real* __restrict__ dgamma, real* __restrict__ dbeta, int m) {
    __shared__ acc_t red[BLOCK];
    const int n = m;  // the whole row
    for (int r = blockIdx.x; r < 5; r += gridDim.x) {
        const long long o = (long long)r * m;
        const acc_t mu = mean[r];
        const acc_t inv_std = 1.0 / sqrt((acc_t)var[r] + 1e-05);
        const bool cached = n <= BN_CACHE * (int)blockDim.x;
        real dac[BN_CACHE], zc[BN_CACHE], ac[BN_CACHE];
        acc_t sb = 0, sg = 0;  // the block's stretch [o, o + n): sum(dy), sum(dy*z_hat)
        if (cached) {
#pragma unroll
            for (int c = 0; c < BN_CACHE; ++c) {
                const int j = threadIdx.x + c * blockDim.x;
                if (j < n) {
                    dac[c] = da[o + j];
                    ac[c] = a[o + j];
                    zc[c] = z[o + j];
                    const acc_t dy = (acc_t)dac[c] * (ac[c] > (real)0 ? (real)1 : (real)0);
                    sb += dy;
                    sg += dy * ((zc[c] - mu) * inv_std);
                }
            }
        } else {
            for (int j = threadIdx.x; j < n; j += blockDim.x) {
                const acc_t dy = (acc_t)da[o + j] * (a[o + j] > (real)0 ? (real)1 : (real)0);
                sb += dy;
                sg += dy * ((z[o + j] - mu) * inv_std);
            }
        }
        const acc_t db = block_sum(sb, red);
        const acc_t dg = block_sum(sg, red);
        if (cached) {
            const acc_t k = gamma[r] * inv_std / m;
#pragma unroll
            for (int c = 0; c < BN_CACHE; ++c) {
                const int j = threadIdx.x + c * blockDim.x;
                if (j < m) {
                    const acc_t dy = (acc_t)dac[c] * (ac[c] > (real)0 ? (real)1 : (real)0);
                    const acc_t z_hat = (zc[c] - mu) * inv_std;
                    dz[o + j] = (real)(k * (m * dy - db - z_hat * dg));
                }
            }
        } else {
            const acc_t k = gamma[r] * inv_std / m;
            for (long long i = o + threadIdx.x; i < o + m; i += blockDim.x) {
                const acc_t dy = (acc_t)da[i] * (a[i] > (real)0 ? (real)1 : (real)0);
                const acc_t z_hat = (z[i] - mu) * inv_std;
                dz[i] = (real)(k * (m * dy - db - z_hat * dg));
            }
        }
        if (threadIdx.x == 0) { dgamma[r] = (real)dg; dbeta[r] = (real)db; }
    }
}

// %fc1.matmul.grad: f32[5,m], %bn1.gamma.grad: f32[5], %bn1.beta.grad: f32[5] = batchnorm_act_grad[act=relu, eps=1e-05, mode=train, negative_slope=0.0] %act1.grad, %act1, %fc1.matmul, %bn1.gamma, %bn1.mean, %bn1.var
// Rows cut into `segs` segments, a block each (few units, or rows longer than a block keeps in
// registers), first pass: segment (r, seg) writes its sum(dy) into scratch[r*segs + seg] and its
// sum(dy*z_hat) into scratch[PARTS + r*segs + seg].
extern "C" __global__ void train_step__fc1_matmul_grad_partial(const real* __restrict__ da, const real* __restrict__ a, const real* __restrict__ z, const real* __restrict__ mean, const real* __restrict__ var, acc_t* __restrict__ scratch, int m, int segs) {
    __shared__ acc_t red[BLOCK];
    for (int p = blockIdx.x; p < 5 * segs; p += gridDim.x) {
        const int r = p / segs, seg = p % segs, lo = (int)part_start(m, seg, segs);
        const int n = (int)part_start(m, seg + 1, segs) - lo;  // examples [lo, lo + n) of unit r
        const long long o = (long long)r * m + lo;
        const acc_t mu = mean[r];
        const acc_t inv_std = 1.0 / sqrt((acc_t)var[r] + 1e-05);
        const bool cached = n <= BN_CACHE * (int)blockDim.x;
        real dac[BN_CACHE], zc[BN_CACHE], ac[BN_CACHE];
        acc_t sb = 0, sg = 0;  // the block's stretch [o, o + n): sum(dy), sum(dy*z_hat)
        if (cached) {
#pragma unroll
            for (int c = 0; c < BN_CACHE; ++c) {
                const int j = threadIdx.x + c * blockDim.x;
                if (j < n) {
                    dac[c] = da[o + j];
                    ac[c] = a[o + j];
                    zc[c] = z[o + j];
                    const acc_t dy = (acc_t)dac[c] * (ac[c] > (real)0 ? (real)1 : (real)0);
                    sb += dy;
                    sg += dy * ((zc[c] - mu) * inv_std);
                }
            }
        } else {
            for (int j = threadIdx.x; j < n; j += blockDim.x) {
                const acc_t dy = (acc_t)da[o + j] * (a[o + j] > (real)0 ? (real)1 : (real)0);
                sb += dy;
                sg += dy * ((z[o + j] - mu) * inv_std);
            }
        }
        sb = block_sum(sb, red);
        sg = block_sum(sg, red);
        if (threadIdx.x == 0) { scratch[p] = sb; scratch[PARTS + p] = sg; }
    }
}

// %fc1.matmul.grad: f32[5,m], %bn1.gamma.grad: f32[5], %bn1.beta.grad: f32[5] = batchnorm_act_grad[act=relu, eps=1e-05, mode=train, negative_slope=0.0] %act1.grad, %act1, %fc1.matmul, %bn1.gamma, %bn1.mean, %bn1.var
// Second pass: every block of unit r adds up the unit's segments in the same order (dbeta, dgamma),
// then dz over its own segment; the unit's first segment writes dgamma and dbeta.
extern "C" __global__ void train_step__fc1_matmul_grad_combine(const real* __restrict__ da, const real* __restrict__ a, const real* __restrict__ z, const real* __restrict__ gamma, const real* __restrict__ mean, const real* __restrict__ var, real* __restrict__ dz, real* __restrict__ dgamma, real* __restrict__ dbeta, const acc_t* __restrict__ scratch, int m, int segs) {
    __shared__ acc_t red[BLOCK];
    for (int p = blockIdx.x; p < 5 * segs; p += gridDim.x) {
        const int r = p / segs, seg = p % segs;
        const acc_t db = sum_parts(scratch + r * segs, segs, red);
        const acc_t dg = sum_parts(scratch + PARTS + r * segs, segs, red);
        const acc_t mu = mean[r];
        const acc_t inv_std = 1.0 / sqrt((acc_t)var[r] + 1e-05);
        const long long o = (long long)r * m, end = o + part_start(m, seg + 1, segs);
        const acc_t k = gamma[r] * inv_std / m;
        for (long long i = o + part_start(m, seg, segs) + threadIdx.x; i < end; i += blockDim.x) {
            const acc_t dy = (acc_t)da[i] * (a[i] > (real)0 ? (real)1 : (real)0);
            const acc_t z_hat = (z[i] - mu) * inv_std;
            dz[i] = (real)(k * (m * dy - db - z_hat * dg));
        }
        if (seg == 0 && threadIdx.x == 0) { dgamma[r] = (real)dg; dbeta[r] = (real)db; }
    }
}

// ======== forward ========

// %act1: f32[5,m] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
// s = gamma/sqrt(running_var + eps), t = beta - running_mean*s, then y = relu(z*s + t): one
// pass over rows cut into `segs` segments, a block each (a block per unit when segs is 1).
extern "C" __global__ void forward__act1(const real* __restrict__ z, const real* __restrict__ gamma, const real* __restrict__ beta, const real* __restrict__ running_mean, const real* __restrict__ running_var, real* __restrict__ y, int m, int segs) {
    for (int p = blockIdx.x; p < 5 * segs; p += gridDim.x) {
        const int r = p / segs, seg = p % segs;
        const acc_t s = gamma[r] / sqrt((acc_t)running_var[r] + 1e-05);
        const acc_t t = beta[r] - running_mean[r] * s;
        const long long o = (long long)r * m, end = o + part_start(m, seg + 1, segs);
        for (long long i = o + part_start(m, seg, segs) + threadIdx.x; i < end; i += blockDim.x) {
            const real x = (real)(z[i] * s + t);
            y[i] = (x < (real)0 ? (real)0 : x);
        }
    }
}

// %out: f32[3,m] = bias_add %out.matmul, %out.b
extern "C" __global__ void forward__out(const real* __restrict__ z, const real* __restrict__ b, real* __restrict__ y, int m) {
    const long long n = 3 * (long long)m;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / m;  // the unit (row) of element i
        const real x = z[i] + b[r];
        y[i] = x;
    }
}

// ======== forward_train ========

// %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
// One block per unit: the batch mean, the variance around it (two passes, in double), then
// y = relu(z*s + t) with s = gamma/sqrt(var + eps), t = beta - mean*s. A row of at most
// BN_CACHE*blockDim.x examples is read once and kept in registers for the three passes; a longer
// row is read three times. Both paths take each thread's elements j = threadIdx.x + k*blockDim.x
// in the same order, so they give the same bits. Launch bounds: at most 64 registers a thread, so
// four blocks of BLOCK threads (a whole SM's 2048) fit an SM without spilling the row.
extern "C" __global__ void __launch_bounds__(BLOCK, 4) forward_train__act1(const real* __restrict__ z, const real* __restrict__ gamma, const real* __restrict__ beta, real* __restrict__ y, real* __restrict__ mean, real* __restrict__ var_out, int m) {
    __shared__ acc_t red[BLOCK];
    const bool cached = m <= BN_CACHE * (int)blockDim.x;
    for (int r = blockIdx.x; r < 5; r += gridDim.x) {
        const real* zr = z + (long long)r * m;
        real* yr = y + (long long)r * m;
        real zc[BN_CACHE];
        acc_t sum = 0;  // the block's stretch zr[0, m): its sum, its mean mu, then m2 = sum of (z - mu)^2
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                const int j = threadIdx.x + k * blockDim.x;
                if (j < m) { zc[k] = zr[j]; sum += zc[k]; }
            }
        } else {
            for (int j = threadIdx.x; j < m; j += blockDim.x) sum += zr[j];
        }
        sum = block_sum(sum, red);
        const acc_t mu = sum / m;
        acc_t sq = 0;
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                if (threadIdx.x + k * blockDim.x < m) { const acc_t d = zc[k] - mu; sq += d * d; }
            }
        } else {
            for (int j = threadIdx.x; j < m; j += blockDim.x) { const acc_t d = zr[j] - mu; sq += d * d; }
        }
        const acc_t m2 = block_sum(sq, red);
        const acc_t var = m2 / m;  // batch variance (biased)
        const acc_t s = gamma[r] / sqrt(var + 1e-05);
        const acc_t t = beta[r] - mu * s;
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                const int j = threadIdx.x + k * blockDim.x;
                if (j < m) {
                    const real x = (real)(zc[k] * s + t);
                    yr[j] = (x < (real)0 ? (real)0 : x);
                }
            }
        } else {
            for (int j = threadIdx.x; j < m; j += blockDim.x) {
                const real x = (real)(zr[j] * s + t);
                yr[j] = (x < (real)0 ? (real)0 : x);
            }
        }
        if (threadIdx.x == 0) { mean[r] = (real)mu; var_out[r] = (real)var; }
    }
}

// %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
// Rows cut into `segs` segments, a block each (few units, or rows longer than a block keeps in
// registers), first pass: segment (r, seg) writes its sum into scratch[r*segs + seg] and the sum of
// its squared deviations around its own mean into scratch[PARTS + r*segs + seg].
extern "C" __global__ void __launch_bounds__(BLOCK, 4) forward_train__act1_partial(const real* __restrict__ z, acc_t* __restrict__ scratch, int m, int segs) {
    __shared__ acc_t red[BLOCK];
    for (int p = blockIdx.x; p < 5 * segs; p += gridDim.x) {
        const int r = p / segs, seg = p % segs, lo = (int)part_start(m, seg, segs);
        const int n = (int)part_start(m, seg + 1, segs) - lo;  // examples [lo, lo + n) of unit r
        const real* zr = z + (long long)r * m + lo;
        const bool cached = n <= BN_CACHE * (int)blockDim.x;
        real zc[BN_CACHE];
        acc_t sum = 0;  // the block's stretch zr[0, n): its sum, its mean mu, then m2 = sum of (z - mu)^2
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                const int j = threadIdx.x + k * blockDim.x;
                if (j < n) { zc[k] = zr[j]; sum += zc[k]; }
            }
        } else {
            for (int j = threadIdx.x; j < n; j += blockDim.x) sum += zr[j];
        }
        sum = block_sum(sum, red);
        const acc_t mu = sum / n;
        acc_t sq = 0;
        if (cached) {
#pragma unroll
            for (int k = 0; k < BN_CACHE; ++k) {
                if (threadIdx.x + k * blockDim.x < n) { const acc_t d = zc[k] - mu; sq += d * d; }
            }
        } else {
            for (int j = threadIdx.x; j < n; j += blockDim.x) { const acc_t d = zr[j] - mu; sq += d * d; }
        }
        const acc_t m2 = block_sum(sq, red);
        if (threadIdx.x == 0) { scratch[p] = sum; scratch[PARTS + p] = m2; }
    }
}

// %act1: f32[5,m], %bn1.mean: f32[5], %bn1.var: f32[5] = batchnorm_act[act=relu, eps=1e-05, mode=train, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
// Second pass: every block of unit r adds up the unit's segments in the same order: the batch mean
// mu = (sum of the segments' sums) / m, the variance from the squared deviations around mu, each
// segment's own plus n*(its mean - mu)^2 (exact, no cancellation); then y over its own segment.
// The unit's first segment writes the statistics.
extern "C" __global__ void forward_train__act1_combine(const real* __restrict__ z, const real* __restrict__ gamma, const real* __restrict__ beta, real* __restrict__ y, real* __restrict__ mean, real* __restrict__ var_out, const acc_t* __restrict__ scratch, int m, int segs) {
    __shared__ acc_t red[BLOCK];
    for (int p = blockIdx.x; p < 5 * segs; p += gridDim.x) {
        const int r = p / segs, seg = p % segs;
        const acc_t* sums = scratch + r * segs;
        const acc_t* m2s = scratch + PARTS + r * segs;
        const acc_t mu = sum_parts(sums, segs, red) / m;  // batch mean
        acc_t sq = 0;
        for (int k = threadIdx.x; k < segs; k += blockDim.x) {
            const int n = (int)(part_start(m, k + 1, segs) - part_start(m, k, segs));
            if (n > 0) { const acc_t d = sums[k] / n - mu; sq += m2s[k] + n * d * d; }
        }
        const acc_t var = block_sum(sq, red) / m;  // batch variance (biased)
        const acc_t s = gamma[r] / sqrt(var + 1e-05);
        const acc_t t = beta[r] - mu * s;
        const long long o = (long long)r * m, end = o + part_start(m, seg + 1, segs);
        for (long long i = o + part_start(m, seg, segs) + threadIdx.x; i < end; i += blockDim.x) {
            const real x = (real)(z[i] * s + t);
            y[i] = (x < (real)0 ? (real)0 : x);
        }
        if (seg == 0 && threadIdx.x == 0) { mean[r] = (real)mu; var_out[r] = (real)var; }
    }
}

// %out: f32[3,m] = bias_add %out.matmul, %out.b
extern "C" __global__ void forward_train__out(const real* __restrict__ z, const real* __restrict__ b, real* __restrict__ y, int m) {
    const long long n = 3 * (long long)m;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / m;  // the unit (row) of element i
        const real x = z[i] + b[r];
        y[i] = x;
    }
}

// ======== evaluate ========

// %act1: f32[5,m] = batchnorm_act[act=relu, eps=1e-05, mode=eval, momentum=0.1, negative_slope=0.0] %fc1.matmul, %bn1.gamma, %bn1.beta, %bn1.running_mean, %bn1.running_var
// s = gamma/sqrt(running_var + eps), t = beta - running_mean*s, then y = relu(z*s + t): one
// pass over rows cut into `segs` segments, a block each (a block per unit when segs is 1).
extern "C" __global__ void evaluate__act1(const real* __restrict__ z, const real* __restrict__ gamma, const real* __restrict__ beta, const real* __restrict__ running_mean, const real* __restrict__ running_var, real* __restrict__ y, int m, int segs) {
    for (int p = blockIdx.x; p < 5 * segs; p += gridDim.x) {
        const int r = p / segs, seg = p % segs;
        const acc_t s = gamma[r] / sqrt((acc_t)running_var[r] + 1e-05);
        const acc_t t = beta[r] - running_mean[r] * s;
        const long long o = (long long)r * m, end = o + part_start(m, seg + 1, segs);
        for (long long i = o + part_start(m, seg, segs) + threadIdx.x; i < end; i += blockDim.x) {
            const real x = (real)(z[i] * s + t);
            y[i] = (x < (real)0 ? (real)0 : x);
        }
    }
}

// %out: f32[3,m] = bias_add %out.matmul, %out.b
extern "C" __global__ void evaluate__out(const real* __restrict__ z, const real* __restrict__ b, real* __restrict__ y, int m) {
    const long long n = 3 * (long long)m;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / m;  // the unit (row) of element i
        const real x = z[i] + b[r];
        y[i] = x;
    }
}

// %loss: f32[] = softmax_cross_entropy %out, %y
// Each thread takes examples j (column j of the logits); the batch is cut into `parts` parts,
// a block each (grid-stride):
// loss = mean over j of -log softmax(logits[:, j])[labels[j]].
// Each block writes the sum of its part's losses into scratch[part]; evaluate__loss_total adds them up.
extern "C" __global__ void evaluate__loss(const real* __restrict__ logits, const long long* __restrict__ labels, real* __restrict__ loss, acc_t* __restrict__ scratch, int m, int parts) {
    __shared__ acc_t red[BLOCK];
    for (int part = blockIdx.x; part < parts; part += gridDim.x) {
        const int end = (int)part_start(m, part + 1, parts);
        acc_t total = 0;
        for (int j = (int)part_start(m, part, parts) + threadIdx.x; j < end; j += blockDim.x) {
            const long long label = labels[j];
            const acc_t w = 1;
            acc_t mx = logits[j];
            for (int c = 1; c < 3; ++c) mx = fmax(mx, (acc_t)logits[(long long)c * m + j]);
            acc_t se = 0;
            for (int c = 0; c < 3; ++c) se += exp(logits[(long long)c * m + j] - mx);
            const acc_t l = log(se) + mx - logits[label * m + j];
            total += w * l;
        }
        total = block_sum(total, red);
        if (threadIdx.x == 0) scratch[part] = total;
    }
}

// %loss: f32[] = softmax_cross_entropy %out, %y
// loss = (the sum of the parts' sums, in a fixed order) / wsum: one block.
extern "C" __global__ void evaluate__loss_total(real* __restrict__ loss, const acc_t* __restrict__ scratch, int m, int parts) {
    __shared__ acc_t red[BLOCK];
    if (blockIdx.x != 0) return;
    const acc_t wsum = m;  // every w_j is 1
    const acc_t total = sum_parts(scratch, parts, red);
    if (threadIdx.x == 0) loss[0] = (real)(total / wsum);
}

// ======== the guarded training step: every check on the device, no host read inside a step ========
// A training step is: train_step's kernels, step_guard, the optimizer kernels, step_commit. The
// host reads `status` (and the losses) only once per logging interval, so the checks that keep a
// step all-or-nothing run here: step_guard flags a NaN/inf loss, gradient or new running
// statistic; the optimizer kernels and step_commit then change nothing. The flag is sticky: every
// later step is skipped too, until the host reads it, names the step and rolls its own count back.
//
// status (unsigned 64-bit words): {flags, first bad step, first bad gradient element, first bad state
// entry, first param element the update made NaN/inf}. Flags: 1 loss, 2 gradient, 4 new state,
// 8 update. header (double): {global step number, slot of this step's loss in `losses`}.
//
// No thread's decision depends on what other threads of its own launch did, so the status is the
// same whatever the interleaving of a real grid (tests/test_cuda_guard_threads.py runs the kernels
// on real threads). A step is skipped when an EARLIER step flagged: `first bad step` is written once,
// from 0 to the flagged step's number (atomicCAS), so a launch reads 0 or its own step's number there
// unless an earlier step flagged, and that word never changes during the launch. Within a step the
// guard's threads OR in every flag they find and atomicMin the indices (each thread scans its
// elements in increasing order and reports its first bad one), so the status holds every flag of
// the step and the lowest bad indices; the host names the most telling one: the loss, then a
// gradient, then a statistic (step.py, the NumPy target's order). The optimizer kernels run whole
// unless the guard flagged (its flags are settled before they start): all of the step's update,
// the lowest param element it made NaN/inf, as the NumPy target's update and finite check.
#define STATUS_FLAGS 0
#define STATUS_STEP 1
#define STATUS_GRAD 2
#define STATUS_STATE 3
#define STATUS_PARAM 4

__device__ __forceinline__ void flag_step(unsigned long long* status, unsigned long long bit, double step) {
    atomicOr(&status[STATUS_FLAGS], bit);
    atomicCAS(&status[STATUS_STEP], 0ULL, (unsigned long long)step);
}

// A status word other threads of this launch may be writing, read once (relaxed, not torn).
__device__ __forceinline__ unsigned long long status_word(const unsigned long long* status, int k) {
#ifdef __CUDA_ARCH__
    return *(const volatile unsigned long long*)&status[k];
#else
    return __atomic_load_n(&status[k], __ATOMIC_RELAXED);  // the host compiler: the emulator, the thread test
#endif
}

// Did a step before `step` flag? (Then this one changes nothing.) Read at the launch's start.
__device__ __forceinline__ bool earlier_step_flagged(const unsigned long long* status, double step) {
    const unsigned long long s = status_word(status, STATUS_STEP);
    return s != 0ULL && s != (unsigned long long)step;
}

__device__ __forceinline__ bool finite_real(real v) {
    return isfinite(v);
}

// checks: n_checked entries of {pointer, length} (int64 words); entry 0 is the flat gradient
// buffer, the others the new running statistics (state.*) this step computed.
extern "C" __global__ void step_guard(unsigned long long* __restrict__ status, const double* __restrict__ header,
                                      const real* __restrict__ loss, real* __restrict__ losses,
                                      const long long* __restrict__ checks, int n_checked) {
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    const double step = header[0];
    if (first == 0) losses[(long long)header[1]] = *loss;
    if (earlier_step_flagged(status, step)) return;  // nothing more to check: the step changes nothing
    if (first == 0 && !finite_real(*loss)) flag_step(status, 1ULL, step);
    for (int e = 0; e < n_checked; ++e) {
        const real* x = (const real*)checks[2 * e];
        const long long n = checks[2 * e + 1];
        for (long long i = first; i < n; i += stride) {
            if (!finite_real(x[i])) {  // this thread's first bad element of x: the lowest wins
                flag_step(status, e == 0 ? 2ULL : 4ULL, step);
                atomicMin((long long*)&status[e == 0 ? STATUS_GRAD : STATUS_STATE], e == 0 ? i : (long long)e);
                break;
            }
        }
    }
}

// The step's last kernel, when nothing was flagged: copies: n_copies entries of {source, destination,
// length} (the new running statistics into the live state); counts: n_counted entries of
// {pointer, length} of int64 step counters (the optimizer's, one per param) to increment.
extern "C" __global__ void step_commit(const unsigned long long* __restrict__ status,
                                       const long long* __restrict__ copies, int n_copies,
                                       const long long* __restrict__ counts, int n_counted) {
    if (status[STATUS_FLAGS] != 0) return;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    for (int e = 0; e < n_copies; ++e) {
        const real* src = (const real*)copies[3 * e];
        real* dst = (real*)copies[3 * e + 1];
        for (long long i = first; i < copies[3 * e + 2]; i += stride) dst[i] = src[i];
    }
    for (int e = 0; e < n_counted; ++e) {
        long long* c = (long long*)counts[2 * e];
        for (long long i = first; i < counts[2 * e + 1]; i += stride) c[i] += 1;
    }
}
