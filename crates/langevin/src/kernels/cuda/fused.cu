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

// y[i] = (x[i] + bias[c] + res[i]) · scale for x, res, y [B, C, S] contiguous, bias [C] (or
// null), res (or null): the convolution's bias, the residual add and the output scale in one
// pass (the epilogue cuDNN's plain convolution lacks).
template <typename T>
__device__ void bias_residual(const T* __restrict__ x, const T* __restrict__ bias,
                              const T* __restrict__ res, T* __restrict__ y, size_t n, int C,
                              int S, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = to_f(x[i]);
        if (bias) v += to_f(bias[(i / S) % C]);
        if (res) v += to_f(res[i]);
        y[i] = from_f<T>(v * scale);
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

#define ENTRY(T, SUF)                                                                        \
    extern "C" __global__ void group_norm_##SUF(const T* x, const T* shift, const T* gamma, \
                                                const T* beta, T* y, int C, int G, int S,    \
                                                float eps, int silu) {                      \
        group_norm<T>(x, shift, gamma, beta, y, C, G, S, eps, silu);                         \
    }                                                                                        \
    extern "C" __global__ void bias_residual_##SUF(const T* x, const T* bias, const T* res, \
                                                   T* y, size_t n, int C, int S,            \
                                                   float scale) {                           \
        bias_residual<T>(x, bias, res, y, n, C, S, scale);                                   \
    }                                                                                        \
    extern "C" __global__ void upsample2x_##SUF(const T* x, T* y, size_t n, int H, int W) {  \
        upsample2x<T>(x, y, n, H, W);                                                        \
    }

ENTRY(float, f32)
ENTRY(__nv_bfloat16, bf16)
