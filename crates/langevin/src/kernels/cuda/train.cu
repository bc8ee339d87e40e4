// Own CUDA kernels for the training step (issue 16), compiled to PTX by
// crates/langevin/build.rs and launched from `kernels::gpu_train`:
// - the backward pass of group norm + time shift + SiLU (candle differentiates its ~10-op
//   composition into as many more full passes);
// - multi-tensor AdamW, EMA and gradient sum of squares: one launch each for every parameter
//   tensor of the network (candle's composition is about a dozen launches per tensor, and the
//   gradient norm read one scalar back per tensor).
// Statistics and optimiser arithmetic are f32; activations and gradients f32 or bf16.
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16(v);
}

// Sums of `a` and `b` over the block (blockDim.x a multiple of 32); every thread gets them.
__device__ float2 block_sum2(float a, float b) {
    __shared__ float2 warp_sums[32];
    __shared__ float2 total;
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffff, a, o);
        b += __shfl_xor_sync(0xffffffff, b, o);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // warp_sums may still be read by a previous call
    if (lane == 0) warp_sums[warp] = make_float2(a, b);
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        float2 s = lane < nw ? warp_sums[lane] : make_float2(0.f, 0.f);
        for (int o = 16; o > 0; o >>= 1) {
            s.x += __shfl_xor_sync(0xffffffff, s.x, o);
            s.y += __shfl_xor_sync(0xffffffff, s.y, o);
        }
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// Backward of y = act(((x + shift[b,c]) − μ)·rstd·γ[c] + β[c]) over groups of C/G channels
// (act = SiLU or identity), one block per (b, g). x, dy, dx [B, C, S]; shift, dshift [B, C];
// affine [2, C] = (γ, β); part [B, 2, C] receives Σ_s dz·x̂ and Σ_s dz per (b, c) in f32 (summed
// over b in fixed order by `group_norm_affine_grad`, so results do not depend on scheduling).
//   dz = dy·act'(z),  dx̂ = dz·γ,
//   dx = rstd·(dx̂ − mean_g(dx̂) − x̂·mean_g(dx̂·x̂)),  dshift[b,c] = Σ_s dx[b,c,s].
template <typename T>
__device__ void group_norm_bwd(const T* __restrict__ x, const T* __restrict__ shift,
                               const T* __restrict__ affine, const T* __restrict__ dy,
                               T* __restrict__ dx, T* __restrict__ dshift,
                               float* __restrict__ part, int C, int G, int S, float eps,
                               int silu) {
    const int b = blockIdx.x / G, g = blockIdx.x % G;
    const int cg = C / G, c0 = g * cg;
    const int n = cg * S;
    const size_t base = ((size_t)b * C + c0) * (size_t)S;
    const T* xg = x + base;
    const T* dyg = dy + base;
    T* dxg = dx + base;
    const T* sh = shift + (size_t)b * C + c0;
    const T* gamma = affine;
    const T* beta = affine + C;

    // Statistics as in the forward kernel (two passes, f32).
    float s = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += to_f(xg[j]) + to_f(sh[j / S]);
    const float mean = block_sum2(s, 0.f).x / n;
    float v = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float d = to_f(xg[j]) + to_f(sh[j / S]) - mean;
        v += d * d;
    }
    const float rstd = rsqrtf(block_sum2(v, 0.f).x / n + eps);

    // Per channel: Σ dz·x̂ and Σ dz (the affine gradients), accumulating the group's
    // Σ dx̂ and Σ dx̂·x̂.
    float g1 = 0.f, g2 = 0.f;
    for (int c = 0; c < cg; ++c) {
        const float ga = to_f(gamma[c0 + c]), be = to_f(beta[c0 + c]);
        const float shc = to_f(sh[c]);
        float a = 0.f, bsum = 0.f;
        for (int i = threadIdx.x; i < S; i += blockDim.x) {
            const size_t j = (size_t)c * S + i;
            const float xh = (to_f(xg[j]) + shc - mean) * rstd;
            float dz = to_f(dyg[j]);
            if (silu) {
                const float z = xh * ga + be;
                const float sg = 1.f / (1.f + __expf(-z));
                dz *= sg * (1.f + z * (1.f - sg));
            }
            a += dz * xh;
            bsum += dz;
        }
        const float2 t = block_sum2(a, bsum);
        if (threadIdx.x == 0) {
            part[((size_t)b * 2) * C + c0 + c] = t.x;
            part[((size_t)b * 2 + 1) * C + c0 + c] = t.y;
        }
        g1 += t.y * ga;  // Σ dx̂ = γ·Σ dz
        g2 += t.x * ga;  // Σ dx̂·x̂ = γ·Σ dz·x̂
    }
    const float m1 = g1 / n, m2 = g2 / n;

    // dx, and dshift as each channel's sum of dx.
    for (int c = 0; c < cg; ++c) {
        const float ga = to_f(gamma[c0 + c]), be = to_f(beta[c0 + c]);
        const float shc = to_f(sh[c]);
        float acc = 0.f;
        for (int i = threadIdx.x; i < S; i += blockDim.x) {
            const size_t j = (size_t)c * S + i;
            const float xh = (to_f(xg[j]) + shc - mean) * rstd;
            float dz = to_f(dyg[j]);
            if (silu) {
                const float z = xh * ga + be;
                const float sg = 1.f / (1.f + __expf(-z));
                dz *= sg * (1.f + z * (1.f - sg));
            }
            const float d = rstd * (dz * ga - m1 - xh * m2);
            dxg[j] = from_f<T>(d);
            acc += d;
        }
        const float tot = block_sum2(acc, 0.f).x;
        if (threadIdx.x == 0) dshift[(size_t)b * C + c0 + c] = from_f<T>(tot);
    }
}

// V consecutive elements, loaded and stored as one (aligned) vector access.
template <typename T, int V> struct alignas(sizeof(T) * V) Pack {
    T e[V];
};

// `group_norm_bwd` with the group's x and dy held in registers: each read once, dx written once
// (the form above reads x four times and dy twice). Up to R vectors of V elements per thread;
// the launcher picks it when the group fits (n ≤ blockDim.x · R · V) and V divides S with x, dy
// and dx V-aligned. Same formulas; sums in a fixed order (deterministic).
template <typename T, int V, int R>
__device__ void group_norm_bwd_reg(const T* __restrict__ x, const T* __restrict__ shift,
                                   const T* __restrict__ affine, const T* __restrict__ dy,
                                   T* __restrict__ dx, T* __restrict__ dshift,
                                   float* __restrict__ part, int C, int G, int S, float eps,
                                   int silu) {
    const int b = blockIdx.x / G, g = blockIdx.x % G;
    const int cg = C / G, c0 = g * cg;
    const int n = cg * S, nv = n / V, Sv = S / V;
    const size_t base = ((size_t)b * C + c0) * (size_t)S;
    const Pack<T, V>* xg = reinterpret_cast<const Pack<T, V>*>(x + base);
    const Pack<T, V>* dyg = reinterpret_cast<const Pack<T, V>*>(dy + base);
    Pack<T, V>* dxg = reinterpret_cast<Pack<T, V>*>(dx + base);
    const T* sh = shift + (size_t)b * C + c0;
    const T* gamma = affine;
    const T* beta = affine + C;
    float xr[R][V], dz[R][V];  // x + shift, then x̂, then dx; dy, then dz
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int iv = threadIdx.x + k * blockDim.x;
        if (iv < nv) {
            const Pack<T, V> p = xg[iv], q = dyg[iv];
            const float a = to_f(sh[iv / Sv]);
#pragma unroll
            for (int e = 0; e < V; ++e) {
                xr[k][e] = to_f(p.e[e]) + a;
                dz[k][e] = to_f(q.e[e]);
                s += xr[k][e];
            }
        }
    }
    const float mean = block_sum2(s, 0.f).x / n;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < R; ++k) {
        if (threadIdx.x + k * blockDim.x < nv) {
#pragma unroll
            for (int e = 0; e < V; ++e) {
                const float d = xr[k][e] - mean;
                v += d * d;
            }
        }
    }
    const float rstd = rsqrtf(block_sum2(v, 0.f).x / n + eps);
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int iv = threadIdx.x + k * blockDim.x;
        if (iv < nv) {
            const int c = c0 + iv / Sv;
            const float ga = to_f(gamma[c]), be = to_f(beta[c]);
#pragma unroll
            for (int e = 0; e < V; ++e) {
                const float xh = (xr[k][e] - mean) * rstd;
                xr[k][e] = xh;
                if (silu) {
                    const float z = xh * ga + be;
                    const float sg = 1.f / (1.f + __expf(-z));
                    dz[k][e] *= sg * (1.f + z * (1.f - sg));
                }
            }
        }
    }
    // Per channel: Σ dz·x̂ and Σ dz (the affine gradients), and the group's Σ dx̂, Σ dx̂·x̂.
    float g1 = 0.f, g2 = 0.f;
    for (int c = 0; c < cg; ++c) {
        float a = 0.f, bsum = 0.f;
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int iv = threadIdx.x + k * blockDim.x;
            if (iv < nv && iv / Sv == c) {
#pragma unroll
                for (int e = 0; e < V; ++e) {
                    a += dz[k][e] * xr[k][e];
                    bsum += dz[k][e];
                }
            }
        }
        const float2 t = block_sum2(a, bsum);
        if (threadIdx.x == 0) {
            part[((size_t)b * 2) * C + c0 + c] = t.x;
            part[((size_t)b * 2 + 1) * C + c0 + c] = t.y;
        }
        const float ga = to_f(gamma[c0 + c]);
        g1 += t.y * ga;
        g2 += t.x * ga;
    }
    const float m1 = g1 / n, m2 = g2 / n;
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int iv = threadIdx.x + k * blockDim.x;
        if (iv < nv) {
            const float ga = to_f(gamma[c0 + iv / Sv]);
            Pack<T, V> o;
#pragma unroll
            for (int e = 0; e < V; ++e) {
                const float d = rstd * (dz[k][e] * ga - m1 - xr[k][e] * m2);
                o.e[e] = from_f<T>(d);
                xr[k][e] = d;
            }
            dxg[iv] = o;
        }
    }
    // dshift: each channel's sum of dx.
    for (int c = 0; c < cg; ++c) {
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int iv = threadIdx.x + k * blockDim.x;
            if (iv < nv && iv / Sv == c) {
#pragma unroll
                for (int e = 0; e < V; ++e) acc += xr[k][e];
            }
        }
        const float tot = block_sum2(acc, 0.f).x;
        if (threadIdx.x == 0) dshift[(size_t)b * C + c0 + c] = from_f<T>(tot);
    }
}

// daffine[k, c] = Σ_b part[b, k, c] in fixed order (k = 0: γ, 1: β).
template <typename T>
__device__ void group_norm_affine_grad(const float* __restrict__ part, T* __restrict__ daffine,
                                       int B, int C) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 2 * C) return;
    float s = 0.f;
    for (int b = 0; b < B; ++b) s += part[(size_t)b * 2 * C + i];
    daffine[i] = from_f<T>(s);
}

// The bias gradient of a convolution, db[c] = scale · Σ_{b,s} g[b, c, s] for g [B, C, S], in
// two fixed-order passes: block (c, p) sums the batch rows p·B/P … (p+1)·B/P of channel c into
// part[c·P + p]; `bias_grad_finish` adds a channel's P parts. Threads stride along positions
// (coalesced); when S is smaller than the block, each thread keeps one (row offset, position)
// pair, so no per-element division.
template <typename T>
__device__ void bias_grad(const T* __restrict__ g, float* __restrict__ part, int B, int C, int S) {
    const int c = blockIdx.x, p = blockIdx.y, P = gridDim.y;
    const int b0 = (int)((long long)B * p / P), b1 = (int)((long long)B * (p + 1) / P);
    float s = 0.f;
    if (S >= (int)blockDim.x) {
        for (int b = b0; b < b1; ++b) {
            const T* row = g + ((size_t)b * C + c) * S;
            for (int i = threadIdx.x; i < S; i += blockDim.x) s += to_f(row[i]);
        }
    } else {
        const int per = blockDim.x / S;
        const int bo = threadIdx.x / S, i = threadIdx.x - bo * S;
        if (bo < per)
            for (int b = b0 + bo; b < b1; b += per) s += to_f(g[((size_t)b * C + c) * S + i]);
    }
    const float t = block_sum2(s, 0.f).x;
    if (threadIdx.x == 0) part[(size_t)c * P + p] = t;
}

template <typename T>
__device__ void bias_grad_finish(const float* __restrict__ part, T* __restrict__ db, int C, int P,
                                 float scale) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.f;
    for (int p = 0; p < P; ++p) s += part[(size_t)c * P + p];
    db[c] = from_f<T>(s * scale);
}

// ---- multi-tensor optimiser kernels ----
// A launch covers every parameter tensor: `table` holds one row of u64 fields per tensor and
// `chunks` one (tensor, first element) pair per block; each block does CHUNK elements.
#define CHUNK 16384

// Σ g² of each chunk into part[block] (f32 within the chunk; the host adds the chunks in f64
// in fixed order). Row: (g pointer, n).
template <typename G>
__device__ void sumsq(const unsigned long long* table, const int2* chunks, float* part) {
    const int2 ch = chunks[blockIdx.x];
    const G* g = (const G*)table[2 * ch.x];
    const long long n = (long long)table[2 * ch.x + 1];
    const long long end = min(n, (long long)ch.y + CHUNK);
    float s = 0.f;
    for (long long i = ch.y + threadIdx.x; i < end; i += blockDim.x) {
        const float v = to_f(g[i]);
        s += v * v;
    }
    const float t = block_sum2(s, 0.f).x;
    if (threadIdx.x == 0) part[blockIdx.x] = t;
}

// AdamW (Loshchilov & Hutter 2019) as `train::adamw::AdamW::step` composes it, with the same
// f32 constants: g ← g·scale; m ← m·β1 + g·(1−β1); v ← v·β2 + g²·(1−β2);
// θ ← θ·(1 − lr·wd) − lr·(m·(1/bc1)) / (√(v·(1/bc2)) + ε). Row: (θ f32, m f32, v f32, g G,
// shadow bf16 or 0, n); a shadow receives bf16(θ) for mixed-precision training.
template <typename G>
__device__ void adamw(const unsigned long long* table, const int2* chunks, float scale, float b1,
                      float nb1, float b2, float nb2, float ibc1, float ibc2, float eps,
                      float decay, float lr) {
    const int2 ch = chunks[blockIdx.x];
    const unsigned long long* row = table + 6 * ch.x;
    float* th = (float*)row[0];
    float* m = (float*)row[1];
    float* v = (float*)row[2];
    const G* g = (const G*)row[3];
    __nv_bfloat16* shadow = (__nv_bfloat16*)row[4];
    const long long n = (long long)row[5];
    const long long end = min(n, (long long)ch.y + CHUNK);
    for (long long i = ch.y + threadIdx.x; i < end; i += blockDim.x) {
        const float gi = to_f(g[i]) * scale;
        const float mi = m[i] * b1 + gi * nb1;
        const float vi = v[i] * b2 + (gi * gi) * nb2;
        m[i] = mi;
        v[i] = vi;
        const float upd = (mi * ibc1) / (sqrtf(vi * ibc2) + eps);
        const float t = th[i] * decay - upd * lr;
        th[i] = t;
        if (shadow) shadow[i] = __float2bfloat16(t);
    }
}

// EMA: e ← e·d + θ·(1−d), nd = 1−d. Row: (e f32, θ f32, n).
__device__ void ema(const unsigned long long* table, const int2* chunks, float d, float nd) {
    const int2 ch = chunks[blockIdx.x];
    const unsigned long long* row = table + 3 * ch.x;
    float* e = (float*)row[0];
    const float* th = (const float*)row[1];
    const long long n = (long long)row[2];
    const long long end = min(n, (long long)ch.y + CHUNK);
    for (long long i = ch.y + threadIdx.x; i < end; i += blockDim.x) e[i] = e[i] * d + th[i] * nd;
}

#define ENTRY(T, SUF)                                                                        \
    extern "C" __global__ void group_norm_bwd_##SUF(                                         \
        const T* x, const T* shift, const T* affine, const T* dy, T* dx, T* dshift,          \
        float* part, int C, int G, int S, float eps, int silu) {                             \
        group_norm_bwd<T>(x, shift, affine, dy, dx, dshift, part, C, G, S, eps, silu);       \
    }                                                                                        \
    extern "C" __global__ void group_norm_affine_grad_##SUF(const float* part, T* daffine,   \
                                                            int B, int C) {                  \
        group_norm_affine_grad<T>(part, daffine, B, C);                                      \
    }                                                                                        \
    extern "C" __global__ void bias_grad_##SUF(const T* g, float* part, int B, int C, int S) { \
        bias_grad<T>(g, part, B, C, S);                                                      \
    }                                                                                        \
    extern "C" __global__ void bias_grad_finish_##SUF(const float* part, T* db, int C, int P, \
                                                      float scale) {                        \
        bias_grad_finish<T>(part, db, C, P, scale);                                          \
    }                                                                                        \
    extern "C" __global__ void sumsq_##SUF(const unsigned long long* table,                  \
                                           const int2* chunks, float* part) {                \
        sumsq<T>(table, chunks, part);                                                       \
    }                                                                                        \
    extern "C" __global__ void adamw_##SUF(                                                  \
        const unsigned long long* table, const int2* chunks, float scale, float b1, float nb1,  \
        float b2, float nb2, float ibc1, float ibc2, float eps, float decay, float lr) {         \
        adamw<T>(table, chunks, scale, b1, nb1, b2, nb2, ibc1, ibc2, eps, decay, lr);            \
    }

ENTRY(float, f32)
ENTRY(__nv_bfloat16, bf16)

extern "C" __global__ void ema_f32(const unsigned long long* table, const int2* chunks, float d,
                                   float nd) {
    ema(table, chunks, d, nd);
}

// Vectors per thread of the register-resident group-norm backward.
#define GN_BWD_R 4
#define GN_BWD_ENTRY(T, SUF, V)                                                              \
    extern "C" __global__ void __launch_bounds__(512) group_norm_bwd_reg_##SUF##_v##V(      \
        const T* x, const T* shift, const T* affine, const T* dy, T* dx, T* dshift,          \
        float* part, int C, int G, int S, float eps, int silu) {                             \
        group_norm_bwd_reg<T, V, GN_BWD_R>(x, shift, affine, dy, dx, dshift, part, C, G, S,  \
                                           eps, silu);                                       \
    }
GN_BWD_ENTRY(float, f32, 1)
GN_BWD_ENTRY(float, f32, 2)
GN_BWD_ENTRY(float, f32, 4)
GN_BWD_ENTRY(__nv_bfloat16, bf16, 1)
GN_BWD_ENTRY(__nv_bfloat16, bf16, 2)
GN_BWD_ENTRY(__nv_bfloat16, bf16, 4)
GN_BWD_ENTRY(__nv_bfloat16, bf16, 8)
