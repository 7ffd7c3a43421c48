// WKV-6 (RWKV-6, "x060"; also RWKV-5 "x052", whose decay is merely constant in time): forward and
// backward, initial state in, final state out.
//
// Per head, with the state S of shape (N key, N value), d_t = exp(w_t) and the bonus u:
//     o_t = (S_{t-1} + diag(u) k_t v_t^T)^T r_t = S_{t-1}^T r_t + <r_t, u * k_t> v_t
//     S_t = diag(d_t) S_{t-1} + k_t v_t^T
// One block per (sequence, head), one thread per channel, everything in float32.
//
// Forward: thread j owns column j of S (value channel j); r, d, k and u * k go through shared
// memory. The state before every CHUNK-th token is saved (`ckpt`) for the backward pass.
//
// Backward, for G = dL/dS_t walking t downwards (with c_t = <v_t, do_t>):
//     dv_t = G^T k_t + <r_t, u * k_t> do_t                          (column sums)
//     dk_t = G v_t + c_t r_t * u      dr_t = S_{t-1} do_t + c_t u * k_t
//     dd_t = rowsum(G * S_{t-1})      du  += c_t r_t * k_t           (row sums)
//     G   <- diag(d_t) G + r_t do_t^T   (= dL/dS_{t-1})
// Thread `me` keeps row `me` and column `me` of G, so no sum crosses threads. S_{t-1} comes from
// replaying each chunk forwards from its checkpoint: inverting the decay would divide by exp(w),
// which underflows for the strong decays RWKV-5/6 allow.
#include "wkv_common.cuh"
#include "wkv_launchers.h"

namespace wkv {
namespace {

struct ForwardToken {
    float r[N], d[N], k[N], uk[N];
};

struct BackwardToken {
    float r[N], d[N], k[N], v[N], d_out[N];
};

template <typename F>
__global__ void forward_kernel(int T, int H, const F* __restrict__ r, const float* __restrict__ w,
                               const F* __restrict__ k, const F* __restrict__ v, const float* __restrict__ u,
                               const float* __restrict__ s0, F* __restrict__ out, float* __restrict__ sT,
                               float* __restrict__ ckpt) {
    const int bh = blockIdx.x, batch = bh / H, head = bh % H;
    const int j = threadIdx.x;
    // Double-buffered by token parity, so one barrier per token suffices (see wkv7.cu).
    __shared__ ForwardToken tokens[2];
    const float u_j = u[head * N + j];

    float S[N];  // S[i] = state[i][j]
    load_column(S, s0 ? s0 + matrix_offset(bh) : nullptr, j);

    for (int t = 0; t < T; t++) {
        if (ckpt && t % CHUNK == 0) store_column(ckpt + checkpoint_offset(bh, T, t / CHUNK), S, j);
        const int64_t at = token_offset(batch, t, T, H, head) + j;
        ForwardToken& x = tokens[t & 1];
        x.r[j] = to_float(r[at]);
        x.d[j] = expf(w[at]);
        x.k[j] = to_float(k[at]);
        x.uk[j] = u_j * x.k[j];
        __syncthreads();

        const float vj = to_float(v[at]);
        float o = 0.f, bonus = 0.f;
#pragma unroll
        for (int i = 0; i < N; i++) {
            o += x.r[i] * S[i];
            bonus += x.r[i] * x.uk[i];
            S[i] = S[i] * x.d[i] + x.k[i] * vj;
        }
        out[at] = from_float<F>(o + bonus * vj);
    }
    store_column(sT + matrix_offset(bh), S, j);
}

template <typename F>
__global__ void backward_kernel(int T, int H, const F* __restrict__ r, const float* __restrict__ w,
                                const F* __restrict__ k, const F* __restrict__ v, const float* __restrict__ u,
                                const F* __restrict__ d_out, const float* __restrict__ d_sT,
                                const float* __restrict__ ckpt, F* __restrict__ d_r, float* __restrict__ d_w,
                                F* __restrict__ d_k, F* __restrict__ d_v, float* __restrict__ d_u,
                                float* __restrict__ d_s0) {
    const int bh = blockIdx.x, batch = bh / H, head = bh % H;
    const int me = threadIdx.x;
    __shared__ BackwardToken tokens[2];  // double-buffered by token parity
    __shared__ float replay_v[2][N];
    __shared__ float u_all[N];
    const float u_me = u[head * N + me];
    u_all[me] = u_me;  // read only after the first barrier below

    float g_row[N], g_col[N];  // g_row[n] = G[me][n], g_col[n] = G[n][me]
    const float* dS = d_sT + matrix_offset(bh);
#pragma unroll
    for (int n = 0; n < N; n++) {
        g_row[n] = dS[me * N + n];
        g_col[n] = dS[n * N + me];
    }
    float du = 0.f;
    float before[CHUNK][N];  // row `me` of the state before each token of the chunk (local memory)

    for (int c = num_chunks(T) - 1; c >= 0; c--) {
        const int t0 = c * CHUNK, t1 = t0 + CHUNK < T ? t0 + CHUNK : T;

        // Replay the chunk from its checkpoint: row `me` needs this thread's d and k and all of v.
        const float* saved = ckpt + checkpoint_offset(bh, T, c);
        float S[N];
#pragma unroll
        for (int n = 0; n < N; n++) S[n] = saved[me * N + n];
        for (int t = t0; t < t1; t++) {
#pragma unroll
            for (int n = 0; n < N; n++) before[t - t0][n] = S[n];
            const int64_t at = token_offset(batch, t, T, H, head) + me;
            float* vs = replay_v[t & 1];
            vs[me] = to_float(v[at]);
            const float d_me = expf(w[at]), k_me = to_float(k[at]);
            __syncthreads();
#pragma unroll
            for (int n = 0; n < N; n++) S[n] = S[n] * d_me + k_me * vs[n];
        }

        // Walk the chunk backwards.
        for (int t = t1 - 1; t >= t0; t--) {
            const int64_t at = token_offset(batch, t, T, H, head) + me;
            BackwardToken& x = tokens[t & 1];
            const float r_me = to_float(r[at]), d_me = expf(w[at]), k_me = to_float(k[at]);
            const float do_me = to_float(d_out[at]);
            x.r[me] = r_me;
            x.d[me] = d_me;
            x.k[me] = k_me;
            x.v[me] = to_float(v[at]);
            x.d_out[me] = do_me;
            __syncthreads();

            float v_do = 0.f, r_uk = 0.f;  // <v_t, do_t> and <r_t, u * k_t>, the same in every thread
            float dk = 0.f, dv = 0.f, dr = 0.f, dd = 0.f;
#pragma unroll
            for (int n = 0; n < N; n++) {
                const float s = before[t - t0][n];
                v_do += x.v[n] * x.d_out[n];
                r_uk += x.r[n] * u_all[n] * x.k[n];
                dk += g_row[n] * x.v[n];
                dv += g_col[n] * x.k[n];
                dr += s * x.d_out[n];
                dd += g_row[n] * s;
            }
            d_r[at] = from_float<F>(dr + v_do * u_me * k_me);
            d_w[at] = dd * d_me;  // d exp(w) / dw = exp(w)
            d_k[at] = from_float<F>(dk + v_do * r_me * u_me);
            d_v[at] = from_float<F>(dv + r_uk * do_me);
            du += v_do * r_me * k_me;

            // G <- dL/dS_{t-1} = diag(d_t) G + r_t do_t^T.
#pragma unroll
            for (int n = 0; n < N; n++) {
                g_row[n] = d_me * g_row[n] + r_me * x.d_out[n];
                g_col[n] = x.d[n] * g_col[n] + x.r[n] * do_me;
            }
        }
    }
    d_u[int64_t(bh) * N + me] = du;
#pragma unroll
    for (int n = 0; n < N; n++) d_s0[matrix_offset(bh) + n * N + me] = g_col[n];
}

const char* const kWrongHeadSize = "wkv6: head size differs from the compiled WKV_HEAD_SIZE";

template <typename F>
const char* forward(int B, int T, int H, int head_size, const void* r, const float* w, const void* k,
                    const void* v, const float* u, const float* s0, void* out, float* sT, float* ckpt,
                    void* stream) {
    if (head_size != N) return kWrongHeadSize;
    return launch(forward_kernel<F>, B * H, stream, T, H, static_cast<const F*>(r), w,
                  static_cast<const F*>(k), static_cast<const F*>(v), u, s0, static_cast<F*>(out), sT, ckpt);
}

template <typename F>
const char* backward(int B, int T, int H, int head_size, const void* r, const float* w, const void* k,
                     const void* v, const float* u, const void* d_out, const float* d_sT, const float* ckpt,
                     void* d_r, float* d_w, void* d_k, void* d_v, float* d_u, float* d_s0, void* stream) {
    if (head_size != N) return kWrongHeadSize;
    return launch(backward_kernel<F>, B * H, stream, T, H, static_cast<const F*>(r), w,
                  static_cast<const F*>(k), static_cast<const F*>(v), u, static_cast<const F*>(d_out),
                  d_sT, ckpt, static_cast<F*>(d_r), d_w, static_cast<F*>(d_k), static_cast<F*>(d_v), d_u,
                  d_s0);
}

}  // namespace
}  // namespace wkv

#define WKV6_FORWARD_NAMES B, T, H, N, r, w, k, v, u, s0, out, sT, ckpt, stream
#define WKV6_BACKWARD_NAMES \
    B, T, H, N, r, w, k, v, u, d_out, d_sT, ckpt, d_r, d_w, d_k, d_v, d_u, d_s0, stream

extern "C" {
const char* wkv6_forward_fp32(WKV6_FORWARD_ARGS) { return wkv::forward<float>(WKV6_FORWARD_NAMES); }
const char* wkv6_forward_bf16(WKV6_FORWARD_ARGS) { return wkv::forward<wkv::bf16>(WKV6_FORWARD_NAMES); }
const char* wkv6_backward_fp32(WKV6_BACKWARD_ARGS) { return wkv::backward<float>(WKV6_BACKWARD_NAMES); }
const char* wkv6_backward_bf16(WKV6_BACKWARD_ARGS) { return wkv::backward<wkv::bf16>(WKV6_BACKWARD_NAMES); }
}
