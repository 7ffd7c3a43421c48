// The host entry points of wkv7.cu and wkv6.cu: plain C, raw pointers and sizes, no torch.
// The PyTorch binding (wkv_bindings.cpp) and the CPU emulation test (through ctypes) call these.
//
// Every function returns nullptr on success or an error message. `F` arrays (void*) hold the
// element type named by the suffix (fp32: float, bf16: bfloat16); all other arrays are float32.
// Shapes: B batch, T tokens, H heads, N head size (must equal the compiled WKV_HEAD_SIZE).
//   per-token (B, T, H, N): r, w, k, v, a, b, out, d_out, sa and their gradients
//   u, du: (H, N) and (B, H, N) (per-sequence partial sums; the caller sums over B)
//   states s0, sT, d_sT, d_s0: (B, H, N, N) [key][value];  ckpt: (B, H, ceil(T/16), N, N)
// s0 may be null (zero initial state). ckpt and sa may be null in the forward pass when no
// backward pass will follow; the backward pass needs both (WKV-6 has no sa).
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

#define WKV7_FORWARD_ARGS                                                                      \
    int B, int T, int H, int N, const void *r, const float *w, const void *k, const void *v,  \
        const void *a, const void *b, const float *s0, void *out, float *sT, float *ckpt,      \
        float *sa, void *stream
#define WKV7_BACKWARD_ARGS                                                                     \
    int B, int T, int H, int N, const void *r, const float *w, const void *k, const void *v,  \
        const void *a, const void *b, const void *d_out, const float *d_sT, const float *ckpt, \
        const float *sa, void *d_r, float *d_w, void *d_k, void *d_v, void *d_a, void *d_b,    \
        float *d_s0, void *stream
#define WKV6_FORWARD_ARGS                                                                      \
    int B, int T, int H, int N, const void *r, const float *w, const void *k, const void *v,  \
        const float *u, const float *s0, void *out, float *sT, float *ckpt, void *stream
#define WKV6_BACKWARD_ARGS                                                                     \
    int B, int T, int H, int N, const void *r, const float *w, const void *k, const void *v,  \
        const float *u, const void *d_out, const float *d_sT, const float *ckpt, void *d_r,    \
        float *d_w, void *d_k, void *d_v, float *d_u, float *d_s0, void *stream

const char *wkv7_forward_fp32(WKV7_FORWARD_ARGS);
const char *wkv7_forward_bf16(WKV7_FORWARD_ARGS);
const char *wkv7_backward_fp32(WKV7_BACKWARD_ARGS);
const char *wkv7_backward_bf16(WKV7_BACKWARD_ARGS);
const char *wkv6_forward_fp32(WKV6_FORWARD_ARGS);
const char *wkv6_forward_bf16(WKV6_FORWARD_ARGS);
const char *wkv6_backward_fp32(WKV6_BACKWARD_ARGS);
const char *wkv6_backward_bf16(WKV6_BACKWARD_ARGS);

#ifdef __cplusplus
}
#endif
