// PyTorch binding of the WKV kernels: checks tensors, passes raw pointers to the plain launchers of
// wkv_launchers.h. Built by rwkv_infctx/ops/cuda.py together with wkv7.cu (-DWKV_VERSION=7) or
// wkv6.cu (-DWKV_VERSION=6). The caller (Python) allocates every output and passes the CUDA stream
// as an integer, so this file needs only torch/extension.h and no CUDA header.
#include <torch/extension.h>

#include <optional>

#include "wkv_launchers.h"

// WKV_VERSION picks the kernels this build binds: 7 or 6. 0 declares both, which only the syntax
// check of tests/test_kernel_emulation.py uses (it never links).
#ifndef WKV_VERSION
#error "compile with -DWKV_VERSION=7 or -DWKV_VERSION=6"
#endif
#define WKV_BIND_7 (WKV_VERSION == 7 || WKV_VERSION == 0)
#define WKV_BIND_6 (WKV_VERSION == 6 || WKV_VERSION == 0)

namespace {

using Tensor = torch::Tensor;
using MaybeTensor = std::optional<Tensor>;

// Every pointer handed to a kernel must be a contiguous tensor of the right dtype, size and device.
void check(const Tensor& x, const char* name, torch::ScalarType dtype, int64_t numel, const Tensor& like) {
    TORCH_CHECK(x.device() == like.device(), "wkv: ", name, " is on ", x.device(), ", expected ", like.device());
    TORCH_CHECK(x.scalar_type() == dtype, "wkv: ", name, " is ", x.scalar_type(), ", expected ", dtype);
    TORCH_CHECK(x.is_contiguous(), "wkv: ", name, " must be contiguous");
    TORCH_CHECK(x.numel() == numel, "wkv: ", name, " has ", x.numel(), " elements, expected ", numel);
}

using Named = std::pair<const Tensor*, const char*>;

void check_all(std::initializer_list<Named> xs, torch::ScalarType dtype, int64_t numel, const Tensor& like) {
    for (const auto& [x, name] : xs) check(*x, name, dtype, numel, like);
}

float* maybe_ptr(const MaybeTensor& x, const char* name, int64_t numel, const Tensor& like) {
    if (!x.has_value()) return nullptr;
    check(*x, name, torch::kFloat32, numel, like);
    return x->data_ptr<float>();
}

struct Sizes {
    int B, T, H, N;
    int64_t token_numel() const { return int64_t(B) * T * H * N; }
    int64_t state_numel() const { return int64_t(B) * H * N * N; }
    int64_t ckpt_numel() const { return state_numel() * ((T + 15) / 16); }
};

Sizes sizes_of(const Tensor& r) {
#ifdef WKV_CPU_EMULATION  // the whole extension built for CPU tensors: a debugging aid, see README.md
    TORCH_CHECK(r.is_cpu() && r.dim() == 4, "wkv: r must be a (B, T, H, N) CPU tensor");
#else
    TORCH_CHECK(r.is_cuda() && r.dim() == 4, "wkv: r must be a (B, T, H, N) CUDA tensor");
#endif
    TORCH_CHECK(r.scalar_type() == torch::kFloat32 || r.scalar_type() == torch::kBFloat16,
                "wkv: r, k, v, a, b must be float32 or bfloat16, got ", r.scalar_type());
    return Sizes{int(r.size(0)), int(r.size(1)), int(r.size(2)), int(r.size(3))};
}

void* stream_ptr(int64_t stream) { return reinterpret_cast<void*>(stream); }

void raise_if(const char* error, const char* what) { TORCH_CHECK(error == nullptr, what, ": ", error); }

#if WKV_BIND_7

void wkv7_forward(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, MaybeTensor s0, Tensor out,
                  Tensor sT, MaybeTensor ckpt, MaybeTensor sa, int64_t stream) {
    const Sizes z = sizes_of(r);
    const auto F = r.scalar_type();
    check_all({{&r, "r"}, {&k, "k"}, {&v, "v"}, {&a, "a"}, {&b, "b"}, {&out, "out"}}, F, z.token_numel(), r);
    check(w, "w", torch::kFloat32, z.token_numel(), r);
    check(sT, "final state", torch::kFloat32, z.state_numel(), r);
    auto launch = F == torch::kBFloat16 ? wkv7_forward_bf16 : wkv7_forward_fp32;
    raise_if(launch(z.B, z.T, z.H, z.N, r.data_ptr(), w.data_ptr<float>(), k.data_ptr(), v.data_ptr(),
                    a.data_ptr(), b.data_ptr(), maybe_ptr(s0, "initial state", z.state_numel(), r),
                    out.data_ptr(), sT.data_ptr<float>(), maybe_ptr(ckpt, "checkpoints", z.ckpt_numel(), r),
                    maybe_ptr(sa, "sa", z.token_numel(), r), stream_ptr(stream)),
             "wkv7 forward");
}

void wkv7_backward(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor d_out, Tensor d_sT,
                   Tensor ckpt, Tensor sa, Tensor d_r, Tensor d_w, Tensor d_k, Tensor d_v, Tensor d_a,
                   Tensor d_b, Tensor d_s0, int64_t stream) {
    const Sizes z = sizes_of(r);
    const auto F = r.scalar_type();
    check_all({{&r, "r"}, {&k, "k"}, {&v, "v"}, {&a, "a"}, {&b, "b"}, {&d_out, "d_out"},
                           {&d_r, "d_r"}, {&d_k, "d_k"}, {&d_v, "d_v"}, {&d_a, "d_a"}, {&d_b, "d_b"}}, F, z.token_numel(), r);
    check_all({{&w, "w"}, {&sa, "sa"}, {&d_w, "d_w"}}, torch::kFloat32, z.token_numel(), r);
    check(d_sT, "d_sT", torch::kFloat32, z.state_numel(), r);
    check(d_s0, "d_s0", torch::kFloat32, z.state_numel(), r);
    check(ckpt, "checkpoints", torch::kFloat32, z.ckpt_numel(), r);
    auto launch = F == torch::kBFloat16 ? wkv7_backward_bf16 : wkv7_backward_fp32;
    raise_if(launch(z.B, z.T, z.H, z.N, r.data_ptr(), w.data_ptr<float>(), k.data_ptr(), v.data_ptr(),
                    a.data_ptr(), b.data_ptr(), d_out.data_ptr(), d_sT.data_ptr<float>(),
                    ckpt.data_ptr<float>(), sa.data_ptr<float>(), d_r.data_ptr(), d_w.data_ptr<float>(),
                    d_k.data_ptr(), d_v.data_ptr(), d_a.data_ptr(), d_b.data_ptr(), d_s0.data_ptr<float>(),
                    stream_ptr(stream)),
             "wkv7 backward");
}

#endif
#if WKV_BIND_6

void wkv6_forward(Tensor r, Tensor w, Tensor k, Tensor v, Tensor u, MaybeTensor s0, Tensor out, Tensor sT,
                  MaybeTensor ckpt, int64_t stream) {
    const Sizes z = sizes_of(r);
    const auto F = r.scalar_type();
    check_all({{&r, "r"}, {&k, "k"}, {&v, "v"}, {&out, "out"}}, F, z.token_numel(), r);
    check(w, "w", torch::kFloat32, z.token_numel(), r);
    check(u, "u", torch::kFloat32, int64_t(z.H) * z.N, r);
    check(sT, "final state", torch::kFloat32, z.state_numel(), r);
    auto launch = F == torch::kBFloat16 ? wkv6_forward_bf16 : wkv6_forward_fp32;
    raise_if(launch(z.B, z.T, z.H, z.N, r.data_ptr(), w.data_ptr<float>(), k.data_ptr(), v.data_ptr(),
                    u.data_ptr<float>(), maybe_ptr(s0, "initial state", z.state_numel(), r), out.data_ptr(),
                    sT.data_ptr<float>(), maybe_ptr(ckpt, "checkpoints", z.ckpt_numel(), r),
                    stream_ptr(stream)),
             "wkv6 forward");
}

void wkv6_backward(Tensor r, Tensor w, Tensor k, Tensor v, Tensor u, Tensor d_out, Tensor d_sT, Tensor ckpt,
                   Tensor d_r, Tensor d_w, Tensor d_k, Tensor d_v, Tensor d_u, Tensor d_s0, int64_t stream) {
    const Sizes z = sizes_of(r);
    const auto F = r.scalar_type();
    check_all({{&r, "r"}, {&k, "k"}, {&v, "v"}, {&d_out, "d_out"}, {&d_r, "d_r"},
                           {&d_k, "d_k"}, {&d_v, "d_v"}}, F, z.token_numel(), r);
    check(w, "w", torch::kFloat32, z.token_numel(), r);
    check(d_w, "d_w", torch::kFloat32, z.token_numel(), r);
    check(u, "u", torch::kFloat32, int64_t(z.H) * z.N, r);
    check(d_u, "d_u", torch::kFloat32, int64_t(z.B) * z.H * z.N, r);
    check(d_sT, "d_sT", torch::kFloat32, z.state_numel(), r);
    check(d_s0, "d_s0", torch::kFloat32, z.state_numel(), r);
    check(ckpt, "checkpoints", torch::kFloat32, z.ckpt_numel(), r);
    auto launch = F == torch::kBFloat16 ? wkv6_backward_bf16 : wkv6_backward_fp32;
    raise_if(launch(z.B, z.T, z.H, z.N, r.data_ptr(), w.data_ptr<float>(), k.data_ptr(), v.data_ptr(),
                    u.data_ptr<float>(), d_out.data_ptr(), d_sT.data_ptr<float>(), ckpt.data_ptr<float>(),
                    d_r.data_ptr(), d_w.data_ptr<float>(), d_k.data_ptr(), d_v.data_ptr(),
                    d_u.data_ptr<float>(), d_s0.data_ptr<float>(), stream_ptr(stream)),
             "wkv6 backward");
}

#endif

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#if WKV_BIND_7
    m.def("wkv7_forward", &wkv7_forward, "WKV-7 forward (outputs preallocated by the caller)");
    m.def("wkv7_backward", &wkv7_backward, "WKV-7 backward (outputs preallocated by the caller)");
#endif
#if WKV_BIND_6
    m.def("wkv6_forward", &wkv6_forward, "WKV-6 forward (outputs preallocated by the caller)");
    m.def("wkv6_backward", &wkv6_backward, "WKV-6 backward (outputs preallocated by the caller)");
#endif
}
