// Channels-last (NHWC) forms of the inference kernels of fused.cu (issue 13, item 3), compiled
// to PTX by crates/langevin/build.rs and launched from `kernels::gpu_nhwc`.
//
// Written because cuDNN's tensor-core convolutions run in NHWC: on NCHW activations it wraps
// every bf16 convolution in NCHW↔NHWC transposes (1.3–2.5 ms of the 14.8 ms ddpm-cifar10
// forward at batch 256, docs/benchmarks.md). With the activations kept channels-last the group
// norm, the bias/residual epilogue and the upsampling must read that layout too.
//
// Layout: x, y [B, S, C] contiguous (S = H·W positions, channels innermost). f32 statistics,
// f32 or bf16 I/O (the `_f32` / `_bf16` entry points).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16(v);
}

template <typename T, int V> struct alignas(sizeof(T) * V) Pack {
    T e[V];
};

// Channels of one group-norm block at most (the launcher checks).
#define CL_MAX_CH 256

// The group totals of per-thread partial sums `s[e]` (thread tx holds local channels
// tx·V + e): every active thread gets, in `out[e]`, the total of the group its channel e
// belongs to. Fixed-order sums (warp shuffles, then warps in order, then the group's channels
// in order), so the result is the same on every run. TXP (channel threads, the active ones
// and the idle padding) is a power of two ≤ 32. With K > 1 the block is one of a cluster of K
// (each holding a slice of the positions): the per-channel totals of the K blocks are added
// in rank order through distributed shared memory. Dynamic shared memory: (warps + 2)·CH
// floats, sized by the launcher (a fixed worst-case array limited the SM to one block).
template <int V, int K>
__device__ void group_totals(float (&s)[V], float (&out)[V], int TXP, int tx, bool active,
                             int CH, int cg) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float* part = smem;               // [nw][CH]
    float* col = smem + nw * CH;      // [CH], this block's totals
    float* total = col + CH;          // [CH], the cluster's
#pragma unroll
    for (int e = 0; e < V; ++e)
        for (int o = 16; o >= TXP; o >>= 1) s[e] += __shfl_xor_sync(0xffffffff, s[e], o);
    __syncthreads();  // `part` and `col` may still be read by a previous call
    if (lane < TXP && active) {
#pragma unroll
        for (int e = 0; e < V; ++e) part[warp * CH + tx * V + e] = s[e];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < CH; c += blockDim.x) {
        float t = 0.f;
        for (int w = 0; w < nw; ++w) t += part[w * CH + c];
        col[c] = t;
    }
    if constexpr (K > 1) {
        namespace cg_ = cooperative_groups;
        cg_::cluster_group cluster = cg_::this_cluster();
        cluster.sync();  // every block's `col` is written
        for (int c = threadIdx.x; c < CH; c += blockDim.x) {
            float t = 0.f;
#pragma unroll
            for (int r = 0; r < K; ++r) t += cluster.map_shared_rank(col, r)[c];
            total[c] = t;
        }
        cluster.sync();  // no block rewrites (or exits with) its `col` while another reads it
    } else {
        __syncthreads();
        total = col;
    }
#pragma unroll
    for (int e = 0; e < V; ++e) {
        const int g0 = ((tx * V + e) / cg) * cg;
        float t = 0.f;
        if (active)
            for (int j = 0; j < cg; ++j) t += total[g0 + j];
        out[e] = t;
    }
}

// y = act(((x + shift[b, c]) − μ) / √(σ² + eps) · γ[c] + β[c]) over groups of cg = C/G
// channels, x and y [B, S, C]. One block per (b, chunk of CH channels = whole groups); thread
// (tx, ty) = (t % TXP, t / TXP) owns channels c0 + tx·V … + V − 1 (so its γ, β and shift stay
// in registers) and positions ty, ty + TY, …; TX = CH / V threads are active per position,
// padded to a power of two TXP (3 channel vectors take 4 lanes). R > 0: the block's S·CH values are held in
// registers (S ≤ R·TY; one read of x); R = 0: three passes over x (any S). K > 1: a cluster
// of K consecutive blocks shares one (b, chunk), block rank r holding positions
// [r·⌈S/K⌉, (r+1)·⌈S/K⌉): maps too large for one block stay register-resident. (Whole-C
// slabs split this way were measured no faster than 64-byte rows; docs/benchmarks.md.) Mean
// and variance by two passes, as in fused.cu.
template <typename T, int V, int R, int K>
__device__ void group_norm_cl(const T* __restrict__ x, const T* __restrict__ shift,
                              const T* __restrict__ gamma, const T* __restrict__ beta,
                              T* __restrict__ y, int C, int G, int S, int CH, float eps,
                              int silu) {
    const int nch = C / CH, blk = blockIdx.x / K, rank = blockIdx.x % K;
    const int b = blk / nch, c0 = (blk % nch) * CH;
    const int Sk = (S + K - 1) / K, p0 = rank * Sk, p1 = min(S, p0 + Sk);
    const int TX = CH / V, TXP = TX <= 1 ? 1 : 1 << (32 - __clz(TX - 1));
    const int TY = blockDim.x / TXP;
    const int tx = threadIdx.x % TXP, ty = threadIdx.x / TXP;
    const bool active = tx < TX;
    const int cg = C / G;
    const float n = (float)S * cg;
    const size_t base = (size_t)b * S * C + c0 + tx * V;
    float sh[V], ga[V], be[V];
#pragma unroll
    for (int e = 0; e < V; ++e) {
        const int c = c0 + (active ? tx : 0) * V + e;  // idle lanes read valid, unused values
        sh[e] = shift ? to_f(shift[(size_t)b * C + c]) : 0.f;
        ga[e] = to_f(gamma[c]);
        be[e] = to_f(beta[c]);
    }
    float s[V], tot[V], mean[V], scale[V];
#pragma unroll
    for (int e = 0; e < V; ++e) s[e] = 0.f;
    if constexpr (R > 0) {
        // The raw vectors stay in registers (bf16: half the registers of floats, so more
        // blocks fit on an SM); x + shift is recomputed in each pass (one add).
        Pack<T, V> r[R > 0 ? R : 1];
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int p = p0 + ty + k * TY;
            if (active && p < p1) {
                r[k] = *reinterpret_cast<const Pack<T, V>*>(x + base + (size_t)p * C);
#pragma unroll
                for (int e = 0; e < V; ++e) s[e] += to_f(r[k].e[e]) + sh[e];
            }
        }
        group_totals<V, K>(s, tot, TXP, tx, active, CH, cg);
#pragma unroll
        for (int e = 0; e < V; ++e) {
            mean[e] = tot[e] / n;
            s[e] = 0.f;
        }
#pragma unroll
        for (int k = 0; k < R; ++k) {
            if (active && p0 + ty + k * TY < p1) {
#pragma unroll
                for (int e = 0; e < V; ++e) {
                    const float d = to_f(r[k].e[e]) + sh[e] - mean[e];
                    s[e] += d * d;
                }
            }
        }
        group_totals<V, K>(s, tot, TXP, tx, active, CH, cg);
#pragma unroll
        for (int e = 0; e < V; ++e) scale[e] = rsqrtf(tot[e] / n + eps) * ga[e];
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int p = p0 + ty + k * TY;
            if (active && p < p1) {
                Pack<T, V> o;
#pragma unroll
                for (int e = 0; e < V; ++e) {
                    float z = (to_f(r[k].e[e]) + sh[e] - mean[e]) * scale[e] + be[e];
                    if (silu) z = z / (1.f + __expf(-z));
                    o.e[e] = from_f<T>(z);
                }
                *reinterpret_cast<Pack<T, V>*>(y + base + (size_t)p * C) = o;
            }
        }
    } else {
        for (int p = active ? p0 + ty : p1; p < p1; p += TY) {
            const Pack<T, V> v = *reinterpret_cast<const Pack<T, V>*>(x + base + (size_t)p * C);
#pragma unroll
            for (int e = 0; e < V; ++e) s[e] += to_f(v.e[e]) + sh[e];
        }
        group_totals<V, K>(s, tot, TXP, tx, active, CH, cg);
#pragma unroll
        for (int e = 0; e < V; ++e) {
            mean[e] = tot[e] / n;
            s[e] = 0.f;
        }
        for (int p = active ? p0 + ty : p1; p < p1; p += TY) {
            const Pack<T, V> v = *reinterpret_cast<const Pack<T, V>*>(x + base + (size_t)p * C);
#pragma unroll
            for (int e = 0; e < V; ++e) {
                const float d = to_f(v.e[e]) + sh[e] - mean[e];
                s[e] += d * d;
            }
        }
        group_totals<V, K>(s, tot, TXP, tx, active, CH, cg);
#pragma unroll
        for (int e = 0; e < V; ++e) scale[e] = rsqrtf(tot[e] / n + eps) * ga[e];
        for (int p = active ? p0 + ty : p1; p < p1; p += TY) {
            const Pack<T, V> v = *reinterpret_cast<const Pack<T, V>*>(x + base + (size_t)p * C);
            Pack<T, V> o;
#pragma unroll
            for (int e = 0; e < V; ++e) {
                float z = (to_f(v.e[e]) + sh[e] - mean[e]) * scale[e] + be[e];
                if (silu) z = z / (1.f + __expf(-z));
                o.e[e] = from_f<T>(z);
            }
            *reinterpret_cast<Pack<T, V>*>(y + base + (size_t)p * C) = o;
        }
    }
}

// ---- The split group norm: statistics, combination and normalisation as three launches ----
// Written because the one-kernel form above runs at half the channel-first kernel's bandwidth
// on NHWC maps (127–148 µs against 60–65 µs for 256×128×32×32 bf16, docs/benchmarks.md): its
// 512-thread blocks hold a whole (image, channel chunk) in registers, so one block fills an SM
// and the SM's memory traffic stops during each block's reductions. Here every block streams
// one chunk of P consecutive positions × all C channels of one image (contiguous memory) and
// holds only R vectors a thread: many small blocks per SM overlap their loads.
//
// Thread (tx, ty) = (t % TX, t / TX), TX = C / V, TY = blockDim.x / TX: channels
// tx·V … tx·V + V − 1 of positions p0 + ty + k·TY, k < R (P = R·TY); threads with ty ≥ TY idle.

// The chunk's per-group totals of the per-thread sums s[e] into out[g], g < G, in a fixed
// order (rows, then the group's channels). Dynamic shared memory `red`: TY·C + C floats.
template <int V>
__device__ void chunk_group_totals(const float (&s)[V], float* out, int C, int G, int TY,
                                   int tx, int ty) {
    extern __shared__ float smem[];
    float* red = smem;          // [TY][C]
    float* col = smem + TY * C; // [C]
    const int cg = C / G;
    if (ty < TY) {
#pragma unroll
        for (int e = 0; e < V; ++e) red[ty * C + tx * V + e] = s[e];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float t = 0.f;
        for (int r = 0; r < TY; ++r) t += red[r * C + c];
        col[c] = t;
    }
    __syncthreads();
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        float t = 0.f;
        for (int j = 0; j < cg; ++j) t += col[g * cg + j];
        out[g] = t;
    }
    __syncthreads();
}

// Per (image b, chunk i): part[(b·nchunk + i)·G + g] = (mean, M2) of x + shift over the
// chunk's positions and group g's channels (two passes over the values held in registers).
template <typename T, int V, int R>
__device__ void gn_cl_stats(const T* __restrict__ x, const T* __restrict__ shift,
                            float2* __restrict__ part, int C, int G, int S, int P) {
    extern __shared__ float smem[];
    const int TX = C / V, TY = blockDim.x / TX, cg = C / G;
    const int nchunk = (S + P - 1) / P, b = blockIdx.x / nchunk, chunk = blockIdx.x % nchunk;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    const int p0 = chunk * P, p1 = min(S, p0 + P);
    const bool active = ty < TY;
    float* gsum = smem + TY * C + C;  // [G]
    float* gm2 = gsum + G;            // [G]
    float sh[V], s[V], mean[V];
    const size_t base = (size_t)b * S * C + tx * V;
#pragma unroll
    for (int e = 0; e < V; ++e) {
        sh[e] = (shift && active) ? to_f(shift[(size_t)b * C + tx * V + e]) : 0.f;
        s[e] = 0.f;
    }
    Pack<T, V> r[R];
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int p = p0 + ty + k * TY;
        if (active && p < p1) r[k] = *reinterpret_cast<const Pack<T, V>*>(x + base + (size_t)p * C);
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
        if (active && p0 + ty + k * TY < p1) {
#pragma unroll
            for (int e = 0; e < V; ++e) s[e] += to_f(r[k].e[e]) + sh[e];
        }
    }
    chunk_group_totals<V>(s, gsum, C, G, TY, tx, ty);
    const float n = (float)(p1 - p0) * cg;
#pragma unroll
    for (int e = 0; e < V; ++e) {
        mean[e] = active ? gsum[(tx * V + e) / cg] / n : 0.f;
        s[e] = 0.f;
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
        if (active && p0 + ty + k * TY < p1) {
#pragma unroll
            for (int e = 0; e < V; ++e) {
                const float d = to_f(r[k].e[e]) + sh[e] - mean[e];
                s[e] += d * d;
            }
        }
    }
    chunk_group_totals<V>(s, gm2, C, G, TY, tx, ty);
    for (int g = threadIdx.x; g < G; g += blockDim.x)
        part[((size_t)b * nchunk + chunk) * G + g] = make_float2(gsum[g] / n, gm2[g]);
}

// stats[b·G + g] = (mean, 1/√(σ² + eps)) from the chunks' (mean, M2), combined in chunk order
// (Chan, Golub & LeVeque's pairwise update). One thread per (b, g).
extern "C" __global__ void group_norm_cl_finalize(const float2* __restrict__ part,
                                                  float2* __restrict__ stats, int B, int G,
                                                  int S, int P, int cg, float eps) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * G) return;
    const int b = i / G, g = i % G, nchunk = (S + P - 1) / P;
    float n = 0.f, mean = 0.f, m2 = 0.f;
    for (int k = 0; k < nchunk; ++k) {
        const float nk = (float)(min(S, (k + 1) * P) - k * P) * cg;
        const float2 pk = part[((size_t)b * nchunk + k) * G + g];
        const float nn = n + nk, d = pk.x - mean;
        mean += d * (nk / nn);
        m2 += pk.y + d * d * (n * nk / nn);
        n = nn;
    }
    stats[i] = make_float2(mean, rsqrtf(m2 / n + eps));
}

// y = act((x + shift − μ) · rstd · γ + β) over the same (image, chunk) blocks as the statistics.
template <typename T, int V, int R>
__device__ void gn_cl_apply(const T* __restrict__ x, const T* __restrict__ shift,
                            const float2* __restrict__ stats, const T* __restrict__ gamma,
                            const T* __restrict__ beta, T* __restrict__ y, int C, int G, int S,
                            int P, int silu) {
    const int TX = C / V, TY = blockDim.x / TX, cg = C / G;
    const int nchunk = (S + P - 1) / P, b = blockIdx.x / nchunk, chunk = blockIdx.x % nchunk;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    if (ty >= TY) return;
    const int p0 = chunk * P, p1 = min(S, p0 + P);
    // z = (x + shift − μ)·scale + β folded into z = x·a + o per channel: two registers a
    // channel, so four blocks fit on an SM.
    float a[V], o[V];
#pragma unroll
    for (int e = 0; e < V; ++e) {
        const int c = tx * V + e;
        const float2 st = stats[(size_t)b * G + c / cg];
        const float sh = shift ? to_f(shift[(size_t)b * C + c]) : 0.f;
        a[e] = st.y * to_f(gamma[c]);
        o[e] = (sh - st.x) * a[e] + to_f(beta[c]);
    }
    const size_t base = (size_t)b * S * C + tx * V;
    Pack<T, V> r[R];
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int p = p0 + ty + k * TY;
        if (p < p1) r[k] = *reinterpret_cast<const Pack<T, V>*>(x + base + (size_t)p * C);
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int p = p0 + ty + k * TY;
        if (p < p1) {
            Pack<T, V> out;
#pragma unroll
            for (int e = 0; e < V; ++e) {
                float z = fmaf(to_f(r[k].e[e]), a[e], o[e]);
                if (silu) z = z / (1.f + __expf(-z));
                out.e[e] = from_f<T>(z);
            }
            *reinterpret_cast<Pack<T, V>*>(y + base + (size_t)p * C) = out;
        }
    }
}

// y[i] = (x[i] + bias[c] + res[i]) · scale for x, res, y [B, S, C], bias [C] (or null), res (or
// null): fused.cu's epilogue with the channel innermost. V elements per access (V divides C,
// pointers V-aligned); nv = n / V vectors, Cv = C / V.
template <typename T, int V>
__device__ void bias_residual_cl(const T* __restrict__ x, const T* __restrict__ bias,
                                 const T* __restrict__ res, T* __restrict__ y, unsigned nv,
                                 unsigned Cv, float scale) {
    const Pack<T, V>* xv = reinterpret_cast<const Pack<T, V>*>(x);
    const Pack<T, V>* rv = reinterpret_cast<const Pack<T, V>*>(res);
    Pack<T, V>* yv = reinterpret_cast<Pack<T, V>*>(y);
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += gridDim.x * blockDim.x) {
        const Pack<T, V> a = xv[i];
        Pack<T, V> bb;
        if (bias) bb = reinterpret_cast<const Pack<T, V>*>(bias)[i % Cv];
        Pack<T, V> r;
        if (res) r = rv[i];
        Pack<T, V> o;
#pragma unroll
        for (int e = 0; e < V; ++e) {
            float v = to_f(a.e[e]);
            if (bias) v += to_f(bb.e[e]);
            if (res) v += to_f(r.e[e]);
            o.e[e] = from_f<T>(v * scale);
        }
        yv[i] = o;
    }
}

// Nearest-neighbour ×2 upsampling, x [B, H, W, C] → y [B, 2H, 2W, C], one thread per output
// vector of V channels (Cv = C / V).
template <typename T, int V>
__device__ void upsample2x_cl(const T* __restrict__ x, T* __restrict__ y, unsigned nv, int H,
                              int W, unsigned Cv) {
    const Pack<T, V>* xv = reinterpret_cast<const Pack<T, V>*>(x);
    Pack<T, V>* yv = reinterpret_cast<Pack<T, V>*>(y);
    const unsigned W2 = 2 * W, H2 = 2 * H;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += gridDim.x * blockDim.x) {
        const unsigned cv = i % Cv, r = i / Cv;
        const unsigned ox = r % W2, r2 = r / W2;
        const unsigned oy = r2 % H2, b = r2 / H2;
        yv[i] = xv[(((size_t)b * H + (oy >> 1)) * W + (ox >> 1)) * Cv + cv];
    }
}

// The skip concatenation along channels, a [P, Ca] and b [P, Cb] → y [P, Ca + Cb], one
// thread per output vector of V channels (V divides Ca and Cb; Cav = Ca / V, Cbv = Cb / V).
// Written because candle's strided copy moved these rows element by element (1.8 ms of the
// 16 ms ddpm-cifar10 bf16 forward, docs/benchmarks.md).
template <typename T, int V>
__device__ void cat_channels_cl(const T* __restrict__ a, const T* __restrict__ b,
                                T* __restrict__ y, unsigned nv, unsigned Cav, unsigned Cbv) {
    const Pack<T, V>* av = reinterpret_cast<const Pack<T, V>*>(a);
    const Pack<T, V>* bv = reinterpret_cast<const Pack<T, V>*>(b);
    Pack<T, V>* yv = reinterpret_cast<Pack<T, V>*>(y);
    const unsigned Cv = Cav + Cbv;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += gridDim.x * blockDim.x) {
        const unsigned p = i / Cv, cv = i % Cv;
        yv[i] = cv < Cav ? av[(size_t)p * Cav + cv] : bv[(size_t)p * Cbv + (cv - Cav)];
    }
}

// Zeros appended below and right of each map, x [B, H, W, C] → y [B, H + ph, W + pw, C]
// (diffusers' `downsample_padding = 0` pads (0, 1, 0, 1) before its stride-2 convolution), one
// thread per output vector. Written because candle's two `pad_with_zeros` made four strided
// copies and two zero fills per downsampling (0.45 ms of the ddpm-cifar10 bf16 forward).
template <typename T, int V>
__device__ void pad_br_cl(const T* __restrict__ x, T* __restrict__ y, unsigned nv, int H, int W,
                          int Hp, int Wp, unsigned Cv) {
    const Pack<T, V>* xv = reinterpret_cast<const Pack<T, V>*>(x);
    Pack<T, V>* yv = reinterpret_cast<Pack<T, V>*>(y);
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += gridDim.x * blockDim.x) {
        const unsigned cv = i % Cv, r = i / Cv;
        const unsigned ox = r % Wp, r2 = r / Wp;
        const unsigned oy = r2 % Hp, b = r2 / Hp;
        Pack<T, V> v;
        if (oy < (unsigned)H && ox < (unsigned)W) {
            v = xv[(((size_t)b * H + oy) * W + ox) * Cv + cv];
        } else {
#pragma unroll
            for (int e = 0; e < V; ++e) v.e[e] = from_f<T>(0.f);
        }
        yv[i] = v;
    }
}

// Registers per thread of the register-resident group norm: R vectors.
#define CL_R 8

#define CL_GN_ENTRY(T, SUF, V, K, ATTR)                                                     \
    extern "C" __global__ void __launch_bounds__(512) ATTR                                   \
        group_norm_cl_reg_##SUF##_v##V##_k##K(const T* x, const T* shift, const T* gamma,    \
                                              const T* beta, T* y, int C, int G, int S,      \
                                              int CH, float eps, int silu) {                 \
        group_norm_cl<T, V, CL_R, K>(x, shift, gamma, beta, y, C, G, S, CH, eps, silu);      \
    }

// Vectors a thread holds in the split group norm (P = CL_SPLIT_R · TY positions a block).
#define CL_SPLIT_R 4

#define CL_ENTRY(T, SUF, V)                                                                  \
    extern "C" __global__ void __launch_bounds__(256, 4)                                     \
        group_norm_cl_stats_##SUF##_v##V(const T* x, const T* shift, float2* part, int C,    \
                                         int G, int S, int P) {                              \
        gn_cl_stats<T, V, CL_SPLIT_R>(x, shift, part, C, G, S, P);                           \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(256, 4) group_norm_cl_apply_##SUF##_v##V(   \
        const T* x, const T* shift, const float2* stats, const T* gamma, const T* beta, T* y, \
        int C, int G, int S, int P, int silu) {                                              \
        gn_cl_apply<T, V, CL_SPLIT_R>(x, shift, stats, gamma, beta, y, C, G, S, P, silu);    \
    }                                                                                        \
    CL_GN_ENTRY(T, SUF, V, 1, )                                                              \
    CL_GN_ENTRY(T, SUF, V, 2, __cluster_dims__(2, 1, 1))                                     \
    CL_GN_ENTRY(T, SUF, V, 4, __cluster_dims__(4, 1, 1))                                     \
    CL_GN_ENTRY(T, SUF, V, 8, __cluster_dims__(8, 1, 1))                                     \
    extern "C" __global__ void __launch_bounds__(512)                                        \
        group_norm_cl_loop_##SUF##_v##V(const T* x, const T* shift, const T* gamma,          \
                                        const T* beta, T* y, int C, int G, int S, int CH,    \
                                        float eps, int silu) {                               \
        group_norm_cl<T, V, 0, 1>(x, shift, gamma, beta, y, C, G, S, CH, eps, silu);         \
    }                                                                                        \
    extern "C" __global__ void bias_residual_cl_##SUF##_v##V(                                \
        const T* x, const T* bias, const T* res, T* y, unsigned nv, unsigned Cv, float scale) { \
        bias_residual_cl<T, V>(x, bias, res, y, nv, Cv, scale);                              \
    }                                                                                        \
    extern "C" __global__ void cat_channels_cl_##SUF##_v##V(                                 \
        const T* a, const T* b, T* y, unsigned nv, unsigned Cav, unsigned Cbv) {             \
        cat_channels_cl<T, V>(a, b, y, nv, Cav, Cbv);                                        \
    }                                                                                        \
    extern "C" __global__ void pad_br_cl_##SUF##_v##V(const T* x, T* y, unsigned nv, int H,  \
                                                      int W, int Hp, int Wp, unsigned Cv) {  \
        pad_br_cl<T, V>(x, y, nv, H, W, Hp, Wp, Cv);                                         \
    }                                                                                        \
    extern "C" __global__ void upsample2x_cl_##SUF##_v##V(const T* x, T* y, unsigned nv,     \
                                                          int H, int W, unsigned Cv) {       \
        upsample2x_cl<T, V>(x, y, nv, H, W, Cv);                                             \
    }

CL_ENTRY(float, f32, 1)
CL_ENTRY(float, f32, 2)
CL_ENTRY(float, f32, 4)
CL_ENTRY(__nv_bfloat16, bf16, 1)
CL_ENTRY(__nv_bfloat16, bf16, 2)
CL_ENTRY(__nv_bfloat16, bf16, 4)
CL_ENTRY(__nv_bfloat16, bf16, 8)
