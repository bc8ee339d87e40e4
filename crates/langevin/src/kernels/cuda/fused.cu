// Own CUDA kernels for the UNet's inference hot path (issue 13), compiled to PTX by
// crates/langevin/build.rs with nvcc and launched as candle custom ops from `kernels::gpu`.
//
// Written because candle composes group normalisation from about ten kernels (each a full
// pass over the activations) and adds biases and residuals as separate broadcast passes;
// see docs/benchmarks.md for the per-kernel profile. All statistics are f32; I/O is f32 or
// bf16 (the `_f32` / `_bf16` entry points).
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16(v);
}

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // warp_sums may still be read by a previous call
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        float s = lane < nw ? warp_sums[lane] : 0.f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// y = act(((x + shift[b, c]) − μ) / √(σ² + eps) · γ[c] + β[c]) over groups of C/G channels,
// x and y [B, C, S] contiguous, shift [B, C] (or null), γ, β [C]; one block per (b, g).
// Mean and variance by two passes over the group (the second from cache): no cancellation
// for activations with |μ| ≫ σ.
template <typename T>
__device__ void group_norm(const T* __restrict__ x, const T* __restrict__ shift,
                           const T* __restrict__ gamma, const T* __restrict__ beta,
                           T* __restrict__ y, int C, int G, int S, float eps, int silu) {
    const int b = blockIdx.x / G, g = blockIdx.x % G;
    const int cg = C / G, c0 = g * cg;
    const int n = cg * S;
    const size_t base = ((size_t)b * C + c0) * (size_t)S;
    const T* xg = x + base;
    T* yg = y + base;
    const T* sh = shift ? shift + (size_t)b * C + c0 : nullptr;

    // Flat loops over the group's n = cg·S elements (j / S is the channel): small feature maps
    // (S = 16 at 4×4) keep every thread busy.
    float s = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        s += to_f(xg[j]) + (sh ? to_f(sh[j / S]) : 0.f);
    const float mean = block_sum(s) / n;
    float v = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float d = to_f(xg[j]) + (sh ? to_f(sh[j / S]) : 0.f) - mean;
        v += d * d;
    }
    const float rstd = rsqrtf(block_sum(v) / n + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const int c = j / S;
        const float a = rstd * to_f(gamma[c0 + c]);
        float z = (to_f(xg[j]) + (sh ? to_f(sh[c]) : 0.f) - mean) * a + to_f(beta[c0 + c]);
        if (silu) z = z / (1.f + __expf(-z));
        yg[j] = from_f<T>(z);
    }
}

// V consecutive elements, loaded and stored as one (aligned) vector access.
template <typename T, int V> struct alignas(sizeof(T) * V) Pack {
    T e[V];
};

// y[i] = (x[i] + bias[c] + res[i]) · scale for x, res, y [B, C, S] contiguous, bias [C] (or
// null), res (or null): the convolution's bias, the residual add and the output scale in one
// pass (the epilogue cuDNN's plain convolution lacks). V elements per access (V divides S and
// every pointer is V-aligned: the launcher checks), so each vector has one channel; nv = n / V
// vectors, Sv = S / V (32-bit index arithmetic: the launcher checks nv < 2^32).
template <typename T, int V>
__device__ void bias_residual(const T* __restrict__ x, const T* __restrict__ bias,
                              const T* __restrict__ res, T* __restrict__ y, unsigned nv,
                              unsigned C, unsigned Sv, float scale) {
    const Pack<T, V>* xv = reinterpret_cast<const Pack<T, V>*>(x);
    const Pack<T, V>* rv = reinterpret_cast<const Pack<T, V>*>(res);
    Pack<T, V>* yv = reinterpret_cast<Pack<T, V>*>(y);
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += gridDim.x * blockDim.x) {
        const Pack<T, V> a = xv[i];
        const float b = bias ? to_f(bias[(i / Sv) % C]) : 0.f;
        Pack<T, V> r;
        if (res) r = rv[i];
        Pack<T, V> o;
#pragma unroll
        for (int e = 0; e < V; ++e) {
            float v = to_f(a.e[e]) + b;
            if (res) v += to_f(r.e[e]);
            o.e[e] = from_f<T>(v * scale);
        }
        yv[i] = o;
    }
}

// The group norm of `group_norm` with the group held in registers: one read of x, one write of
// y (the three-pass form re-reads x twice). Up to R vectors of V elements per thread; the
// launcher picks it when the group fits (n ≤ blockDim.x · R · V) and V divides S with aligned
// pointers. Mean and variance still by two passes, over the registers.
template <typename T, int V, int R>
__device__ void group_norm_reg(const T* __restrict__ x, const T* __restrict__ shift,
                               const T* __restrict__ gamma, const T* __restrict__ beta,
                               T* __restrict__ y, int C, int G, int S, float eps, int silu) {
    const int b = blockIdx.x / G, g = blockIdx.x % G;
    const int cg = C / G, c0 = g * cg;
    const int n = cg * S, nv = n / V, Sv = S / V;
    const size_t base = ((size_t)b * C + c0) * (size_t)S;
    const Pack<T, V>* xg = reinterpret_cast<const Pack<T, V>*>(x + base);
    Pack<T, V>* yg = reinterpret_cast<Pack<T, V>*>(y + base);
    const T* sh = shift ? shift + (size_t)b * C + c0 : nullptr;
    float r[R][V];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int iv = threadIdx.x + k * blockDim.x;
        if (iv < nv) {
            const Pack<T, V> p = xg[iv];
            const float a = sh ? to_f(sh[iv / Sv]) : 0.f;
#pragma unroll
            for (int e = 0; e < V; ++e) {
                r[k][e] = to_f(p.e[e]) + a;
                s += r[k][e];
            }
        }
    }
    const float mean = block_sum(s) / n;
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < R; ++k) {
        if (threadIdx.x + k * blockDim.x < nv) {
#pragma unroll
            for (int e = 0; e < V; ++e) {
                const float d = r[k][e] - mean;
                q += d * d;
            }
        }
    }
    const float rstd = rsqrtf(block_sum(q) / n + eps);
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int iv = threadIdx.x + k * blockDim.x;
        if (iv < nv) {
            const int c = c0 + iv / Sv;
            const float a = rstd * to_f(gamma[c]), bb = to_f(beta[c]);
            Pack<T, V> o;
#pragma unroll
            for (int e = 0; e < V; ++e) {
                float z = (r[k][e] - mean) * a + bb;
                if (silu) z = z / (1.f + __expf(-z));
                o.e[e] = from_f<T>(z);
            }
            yg[iv] = o;
        }
    }
}

// Nearest-neighbour ×2 upsampling, x [P, H, W] → y [P, 2H, 2W], one thread per output.
template <typename T>
__device__ void upsample2x(const T* __restrict__ x, T* __restrict__ y, size_t n, int H, int W) {
    const int W2 = 2 * W, H2 = 2 * H;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int ox = i % W2;
        const size_t r = i / W2;
        const int oy = r % H2;
        const size_t p = r / H2;
        y[i] = x[(p * H + (oy >> 1)) * W + (ox >> 1)];
    }
}

// Registers per thread of the register-resident group norm: R vectors.
#define GN_R 8

#define ENTRY(T, SUF)                                                                        \
    extern "C" __global__ void group_norm_##SUF(const T* x, const T* shift, const T* gamma, \
                                                const T* beta, T* y, int C, int G, int S,    \
                                                float eps, int silu) {                      \
        group_norm<T>(x, shift, gamma, beta, y, C, G, S, eps, silu);                         \
    }                                                                                        \
    extern "C" __global__ void upsample2x_##SUF(const T* x, T* y, size_t n, int H, int W) {  \
        upsample2x<T>(x, y, n, H, W);                                                        \
    }

#define VEC_ENTRY(T, SUF, V)                                                                 \
    extern "C" __global__ void bias_residual_##SUF##_v##V(const T* x, const T* bias,        \
                                                          const T* res, T* y, unsigned nv,   \
                                                          unsigned C, unsigned Sv,           \
                                                          float scale) {                     \
        bias_residual<T, V>(x, bias, res, y, nv, C, Sv, scale);                              \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(512)                                        \
        group_norm_reg_##SUF##_v##V(const T* x, const T* shift, const T* gamma,              \
                                    const T* beta, T* y, int C, int G, int S, float eps,     \
                                    int silu) {                                              \
        group_norm_reg<T, V, GN_R>(x, shift, gamma, beta, y, C, G, S, eps, silu);            \
    }

ENTRY(float, f32)
ENTRY(__nv_bfloat16, bf16)
VEC_ENTRY(float, f32, 1)
VEC_ENTRY(float, f32, 2)
VEC_ENTRY(float, f32, 4)
VEC_ENTRY(__nv_bfloat16, bf16, 1)
VEC_ENTRY(__nv_bfloat16, bf16, 2)
VEC_ENTRY(__nv_bfloat16, bf16, 4)
VEC_ENTRY(__nv_bfloat16, bf16, 8)
