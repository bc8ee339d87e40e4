// Fused attention for small heads on the channel-first map (issue 13), compiled to PTX by
// crates/langevin/build.rs and launched from `kernels::gpu_attention`.
//
// Written because with diffusers' default `attention_head_dim = 8` the UNet's attention is 32
// heads of d = 8: the score products are tiny and the [B·heads, N, N] score tensor that the
// GEMM + softmax form materialises (1 GB in bf16 at batch 256, N = 256) dominates (measured:
// the heads-8 forward at 0.74–0.88× PyTorch, whose SDPA never writes the scores). Here each
// thread owns one query, keeps q and the output accumulator in registers, and streams key and
// value tiles through shared memory with the online softmax (Milakov & Gimelshein 2018; the
// tiling of FlashAttention, Dao et al. 2022). For d ≤ 32 this SIMT form reads q, k, v once and
// writes o once; larger heads keep the tensor-core GEMMs.
//
// Layout: q, k, v, o are [BH, D, N] contiguous (head-major channels, positions last), or with
// `cl` the channels-last map [B, N, heads·D] (head h of batch b is channels h·D … h·D + D − 1;
// see kernels/cuda/nhwc.cu); q already scaled by 1/√d. f32 accumulation; f32 or bf16 I/O.
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16(v);
}

constexpr int TK = 32;  // keys per shared-memory tile

// One block of blockDim.x queries of one head (blockIdx.y = b·heads + h); grid.x covers N.
// Element (d, i) of the head is at base + d·sd + i·si.
template <typename T, int D>
__device__ void attention_cf(const T* __restrict__ q, const T* __restrict__ k,
                             const T* __restrict__ v, T* __restrict__ o, int n, int heads,
                             int cl) {
    __shared__ float ks[D][TK];
    __shared__ float vs[D][TK];
    const int bh = blockIdx.y;
    const size_t base = cl ? ((size_t)(bh / heads) * n * heads + bh % heads) * D
                           : (size_t)bh * D * n;
    const size_t sd = cl ? 1 : n, si = cl ? (size_t)heads * D : 1;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float qr[D], acc[D];
#pragma unroll
    for (int d = 0; d < D; ++d) {
        qr[d] = i < n ? to_f(q[base + d * sd + i * si]) : 0.f;
        acc[d] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int j0 = 0; j0 < n; j0 += TK) {
        __syncthreads();  // the previous tile is no longer read
        for (int e = threadIdx.x; e < D * TK; e += blockDim.x) {
            // Consecutive threads read consecutive addresses in either layout.
            const int d = cl ? e % D : e / TK, jj = cl ? e / D : e % TK, j = j0 + jj;
            const bool in = j < n;
            ks[d][jj] = in ? to_f(k[base + d * sd + j * si]) : 0.f;
            vs[d][jj] = in ? to_f(v[base + d * sd + j * si]) : 0.f;
        }
        __syncthreads();
        const int tk = min(TK, n - j0);
        float s[TK];
        float tmax = -INFINITY;
#pragma unroll
        for (int jj = 0; jj < TK; ++jj) {
            float a = 0.f;
#pragma unroll
            for (int d = 0; d < D; ++d) a = fmaf(qr[d], ks[d][jj], a);
            s[jj] = jj < tk ? a : -INFINITY;
            tmax = fmaxf(tmax, s[jj]);
        }
        const float mn = fmaxf(m, tmax);  // finite: the tile has at least one key
        const float corr = __expf(m - mn);  // 0 for the first tile (m = -inf)
        l *= corr;
#pragma unroll
        for (int d = 0; d < D; ++d) acc[d] *= corr;
#pragma unroll
        for (int jj = 0; jj < TK; ++jj) {
            const float p = __expf(s[jj] - mn);  // 0 past the last key
            l += p;
#pragma unroll
            for (int d = 0; d < D; ++d) acc[d] = fmaf(p, vs[d][jj], acc[d]);
        }
        m = mn;
    }
    if (i < n) {
        const float inv = 1.f / l;
#pragma unroll
        for (int d = 0; d < D; ++d) o[base + d * sd + i * si] = from_f<T>(acc[d] * inv);
    }
}

#define ENTRY(T, SUF, D)                                                                  \
    extern "C" __global__ void attention_cf_##SUF##_d##D(const T* q, const T* k, const T* v, \
                                                          T* o, int n, int heads, int cl) { \
        attention_cf<T, D>(q, k, v, o, n, heads, cl);                                     \
    }

ENTRY(float, f32, 8)
ENTRY(float, f32, 16)
ENTRY(float, f32, 32)
ENTRY(__nv_bfloat16, bf16, 8)
ENTRY(__nv_bfloat16, bf16, 16)
ENTRY(__nv_bfloat16, bf16, 32)
