// What the WKV kernels share: the compile-time sizes, element-type conversions, indexing and one
// launch helper. It compiles either as real CUDA (nvcc) or, with -DWKV_CPU_EMULATION, as plain
// C++20 for the CPU emulation used by the test suite (see emulate/cuda_emulation.h).
//
// Conventions (identical to rwkv_infctx/ops/reference.py):
//   per-token tensors r, w, k, v, a, b, out: (B, T, H, N) contiguous
//   u: (H, N); states s0, sT: (B, H, N, N) float32, indexed [key][value]
//   w is the natural log of the decay; the kernels use exp(w).
//   r, k, v, a, b, out and their gradients have element type F (float or bf16); w, u, the states
//   and their gradients are always float32; all arithmetic is float32.
#pragma once

#ifdef WKV_CPU_EMULATION
#include "emulate/cuda_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <cstdio>

#ifndef WKV_HEAD_SIZE
#define WKV_HEAD_SIZE 64
#endif

namespace wkv {

constexpr int N = WKV_HEAD_SIZE;  // head size = threads per block
// The forward pass saves the state every CHUNK tokens; the backward pass replays one chunk at a
// time from there, keeping that many states per thread in local memory.
constexpr int CHUNK = 16;
// One thread per channel: at N = 256 the WKV-7 backward already fills a block's 64K registers
// (N threads x 255) and spills its rows of G to local memory; larger heads would not launch.
static_assert(N >= 1 && N <= 256, "WKV_HEAD_SIZE must be in 1..256 (one thread per channel)");

#ifdef WKV_CPU_EMULATION
using bf16 = wkv_emu::bfloat16;
__device__ __forceinline__ float to_float(bf16 x) { return wkv_emu::bf16_to_float(x); }
__device__ __forceinline__ bf16 to_bf16(float x) { return wkv_emu::float_to_bf16(x); }
#else
using bf16 = __nv_bfloat16;
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 to_bf16(float x) { return __float2bfloat16_rn(x); }
#endif
__device__ __forceinline__ float to_float(float x) { return x; }

template <typename F>
__device__ __forceinline__ F from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) { return to_bf16(x); }

__host__ __device__ __forceinline__ int num_chunks(int T) { return (T + CHUNK - 1) / CHUNK; }

// Offset of element 0 of token t of head h of sequence b in a (B, T, H, N) tensor.
__device__ __forceinline__ int64_t token_offset(int b, int t, int T, int H, int h) {
    return ((int64_t(b) * T + t) * H + h) * N;
}

// Offset of the (N, N) matrix number `index` (b * H + h, or a checkpoint number) in a stack of them.
__device__ __forceinline__ int64_t matrix_offset(int64_t index) { return index * N * N; }

// Offset of the state checkpoint taken at the start of chunk c of sequence-head bh.
__device__ __forceinline__ int64_t checkpoint_offset(int bh, int T, int c) {
    return matrix_offset(int64_t(bh) * num_chunks(T) + c);
}

// A thread keeps one column j of an (N, N) matrix in registers: in from memory (zeros when there
// is no matrix, i.e. no initial state) and back out.
__device__ __forceinline__ void load_column(float (&column)[N], const float* matrix, int j) {
#pragma unroll
    for (int i = 0; i < N; i++) column[i] = matrix ? matrix[i * N + j] : 0.f;
}
__device__ __forceinline__ void store_column(float* matrix, const float (&column)[N], int j) {
#pragma unroll
    for (int i = 0; i < N; i++) matrix[i * N + j] = column[i];
}

template <typename T>
struct identity {
    using type = T;
};

// Launches kernel(args...) on `blocks` blocks of N threads; returns nullptr or an error message.
// `identity` keeps the argument types from being deduced, so they convert to the kernel's.
template <typename... Params>
const char* launch(void (*kernel)(Params...), int blocks, void* stream,
                   typename identity<Params>::type... args) {
    if (blocks == 0) return nullptr;
#ifdef WKV_CPU_EMULATION
    (void)stream;
    wkv_emu::run(kernel, unsigned(blocks), unsigned(N), args...);
    return nullptr;
#else
    // An error left by earlier, unrelated work would otherwise be reported as this launch's:
    // take it (which also clears it) and say where it came from.
    cudaError_t earlier = cudaGetLastError();
    if (earlier != cudaSuccess) {
        thread_local char message[160];
        snprintf(message, sizeof message, "an earlier CUDA operation failed before this WKV launch: %s",
                 cudaGetErrorString(earlier));
        return message;
    }
    kernel<<<blocks, N, 0, static_cast<cudaStream_t>(stream)>>>(args...);
    cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
#endif
}

}  // namespace wkv
