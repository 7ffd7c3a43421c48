// CPU emulation of the small part of CUDA that the WKV kernels use, so that the very same kernel
// sources compile with g++ (-std=c++20 -DWKV_CPU_EMULATION) and can be tested without a GPU.
//
// Model: a launch runs its blocks one after another; the threads of a block are real std::threads,
// so __syncthreads() is a real barrier and a missing or misplaced one shows up (as a race or a
// hang) instead of being hidden by sequential execution.
//   - __shared__ becomes `static`: a kernel-local static array is shared by all threads of the
//     process, which is exactly the block's shared memory because only one block runs at a time.
//   - threadIdx is thread_local; blockIdx, blockDim and gridDim are plain globals (one block at a time).
// Never include this from a real CUDA build: wkv_common.cuh picks it only under WKV_CPU_EMULATION.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx{0, 0, 0};
inline dim3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

namespace wkv_emu {

inline std::barrier<>* block_barrier = nullptr;

// bfloat16 as raw bits; conversions round to nearest even, as torch and __float2bfloat16_rn do.
struct bfloat16 {
    uint16_t bits;
};

inline float bf16_to_float(bfloat16 x) {
    uint32_t u = uint32_t(x.bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline bfloat16 float_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if (std::isnan(f)) return bfloat16{0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);  // round half to even on the 16 dropped bits
    return bfloat16{uint16_t(u >> 16)};
}

// Runs kernel(args...) on a 1-D grid of `blocks` blocks of `threads` threads.
template <typename... Params, typename... Args>
void run(void (*kernel)(Params...), unsigned blocks, unsigned threads, Args... args) {
    gridDim = dim3(blocks);
    blockDim = dim3(threads);
    for (unsigned block = 0; block < blocks; block++) {
        blockIdx = dim3(block);
        std::barrier<> barrier(threads);
        block_barrier = &barrier;
        std::vector<std::thread> team;
        team.reserve(threads);
        for (unsigned t = 0; t < threads; t++) {
            team.emplace_back([=] {
                threadIdx = dim3(t);
                kernel(args...);
            });
        }
        for (auto& member : team) member.join();
        block_barrier = nullptr;
    }
}

}  // namespace wkv_emu

inline void __syncthreads() { wkv_emu::block_barrier->arrive_and_wait(); }
