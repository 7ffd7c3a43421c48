// WKV-7 (RWKV-7, "x070"): forward and backward, initial state in, final state out.
//
// Per head, with the state S of shape (N key, N value) and d_t = exp(w_t):
//     sa_t = S_{t-1}^T a_t
//     S_t  = diag(d_t) S_{t-1} + b_t sa_t^T + k_t v_t^T
//     o_t  = S_t^T r_t
// One block per (sequence, head), one thread per channel, everything in float32.
//
// Forward: thread j owns column j of S (value channel j), so sa_t[j] and o_t[j] are sums over its
// own registers; the per-token vectors r, d, k, a, b go through shared memory. It saves the state
// before every CHUNK-th token (`ckpt`) and every sa_t (`sa`) for the backward pass.
//
// Backward, for G = dL/dS_t walking t downwards:
//     G  += r_t do_t^T                    dr_t = S_t do_t
//     dv_t = G^T k_t     dsa_t = G^T b_t  (column sums)
//     dk_t = G v_t       db_t = G sa_t    dd_t = rowsum(G * S_{t-1})    da_t = S_{t-1} dsa_t  (row sums)
//     G   <- diag(d_t) G + a_t dsa_t^T    (= dL/dS_{t-1})
// Thread `me` keeps row `me` of G and of S and also column `me` of G (updated redundantly), so
// every sum above is over its own registers; only dsa_t crosses threads (shared memory).
// S_{t-1} is not recovered by inverting the step (exp(w) may underflow): each chunk is replayed
// forwards from its checkpoint with the saved sa, keeping row `me` of every state of the chunk.
#include "wkv_common.cuh"
#include "wkv_launchers.h"

namespace wkv {
namespace {

struct ForwardToken {
    float r[N], d[N], k[N], a[N], b[N];
};

struct BackwardToken {
    float r[N], d[N], k[N], v[N], a[N], b[N], d_out[N], sa[N];
};

template <typename F>
__global__ void forward_kernel(int T, int H, const F* __restrict__ r, const float* __restrict__ w,
                               const F* __restrict__ k, const F* __restrict__ v, const F* __restrict__ a,
                               const F* __restrict__ b, const float* __restrict__ s0, F* __restrict__ out,
                               float* __restrict__ sT, float* __restrict__ ckpt, float* __restrict__ sa_out) {
    const int bh = blockIdx.x, batch = bh / H, head = bh % H;
    const int j = threadIdx.x;
    // Double-buffered by token parity: a thread writing token t+1's vectors cannot overwrite
    // token t's while a slower thread still reads them, so one barrier per token suffices.
    __shared__ ForwardToken tokens[2];

    float S[N];  // S[i] = state[i][j]
    load_column(S, s0 ? s0 + matrix_offset(bh) : nullptr, j);

    for (int t = 0; t < T; t++) {
        if (ckpt && t % CHUNK == 0) store_column(ckpt + checkpoint_offset(bh, T, t / CHUNK), S, j);
        const int64_t at = token_offset(batch, t, T, H, head) + j;
        ForwardToken& x = tokens[t & 1];
        x.r[j] = to_float(r[at]);
        x.d[j] = expf(w[at]);
        x.k[j] = to_float(k[at]);
        x.a[j] = to_float(a[at]);
        x.b[j] = to_float(b[at]);
        __syncthreads();

        const float vj = to_float(v[at]);
        float sa = 0.f;
#pragma unroll
        for (int i = 0; i < N; i++) sa += x.a[i] * S[i];
        if (sa_out) sa_out[at] = sa;
        float o = 0.f;
#pragma unroll
        for (int i = 0; i < N; i++) {
            S[i] = S[i] * x.d[i] + x.b[i] * sa + x.k[i] * vj;
            o += x.r[i] * S[i];
        }
        out[at] = from_float<F>(o);
    }
    store_column(sT + matrix_offset(bh), S, j);
}

template <typename F>
__global__ void backward_kernel(int T, int H, const F* __restrict__ r, const float* __restrict__ w,
                                const F* __restrict__ k, const F* __restrict__ v, const F* __restrict__ a,
                                const F* __restrict__ b, const F* __restrict__ d_out,
                                const float* __restrict__ d_sT, const float* __restrict__ ckpt,
                                const float* __restrict__ sa, F* __restrict__ d_r, float* __restrict__ d_w,
                                F* __restrict__ d_k, F* __restrict__ d_v, F* __restrict__ d_a,
                                F* __restrict__ d_b, float* __restrict__ d_s0) {
    const int bh = blockIdx.x, batch = bh / H, head = bh % H;
    const int me = threadIdx.x;
    __shared__ BackwardToken tokens[2];  // double-buffered by token parity, as in the forward pass
    __shared__ float replay_v[2][N], replay_sa[2][N];
    __shared__ float dsa_all[N];

    float g_row[N], g_col[N];  // g_row[n] = G[me][n], g_col[n] = G[n][me]
    const float* dS = d_sT + matrix_offset(bh);
#pragma unroll
    for (int n = 0; n < N; n++) {
        g_row[n] = dS[me * N + n];
        g_col[n] = dS[n * N + me];
    }
    float S[N];              // row `me` of the state after the token being differentiated
    float before[CHUNK][N];  // row `me` of the state before each token of the chunk (local memory)

    for (int c = num_chunks(T) - 1; c >= 0; c--) {
        const int t0 = c * CHUNK, t1 = t0 + CHUNK < T ? t0 + CHUNK : T;

        // Replay the chunk from its checkpoint. Row `me` of the next state needs only this
        // thread's d, k, b and the full v and sa vectors, which the forward pass saved.
        const float* saved = ckpt + checkpoint_offset(bh, T, c);
#pragma unroll
        for (int n = 0; n < N; n++) S[n] = saved[me * N + n];
        for (int t = t0; t < t1; t++) {
#pragma unroll
            for (int n = 0; n < N; n++) before[t - t0][n] = S[n];
            const int64_t at = token_offset(batch, t, T, H, head) + me;
            float* vs = replay_v[t & 1];
            float* sas = replay_sa[t & 1];
            vs[me] = to_float(v[at]);
            sas[me] = sa[at];
            const float d_me = expf(w[at]), k_me = to_float(k[at]), b_me = to_float(b[at]);
            __syncthreads();
#pragma unroll
            for (int n = 0; n < N; n++) S[n] = S[n] * d_me + b_me * sas[n] + k_me * vs[n];
        }

        // Walk the chunk backwards.
        for (int t = t1 - 1; t >= t0; t--) {
            const int64_t at = token_offset(batch, t, T, H, head) + me;
            BackwardToken& x = tokens[t & 1];
            const float r_me = to_float(r[at]), d_me = expf(w[at]), a_me = to_float(a[at]);
            const float do_me = to_float(d_out[at]);
            x.r[me] = r_me;
            x.d[me] = d_me;
            x.k[me] = to_float(k[at]);
            x.v[me] = to_float(v[at]);
            x.a[me] = a_me;
            x.b[me] = to_float(b[at]);
            x.d_out[me] = do_me;
            x.sa[me] = sa[at];
            __syncthreads();

            // The output o_t = S_t^T r_t.
            float dr = 0.f;
#pragma unroll
            for (int n = 0; n < N; n++) {
                dr += S[n] * x.d_out[n];
                g_row[n] += r_me * x.d_out[n];
                g_col[n] += x.r[n] * do_me;
            }
            // Column sums of G = dL/dS_t: the k v^T and b sa^T terms.
            float dv = 0.f, dsa = 0.f;
#pragma unroll
            for (int n = 0; n < N; n++) {
                dv += g_col[n] * x.k[n];
                dsa += g_col[n] * x.b[n];
            }
            dsa_all[me] = dsa;
            __syncthreads();

            // Row sums, which need S_{t-1}; it also becomes S for the next (earlier) token.
            float dk = 0.f, db = 0.f, dd = 0.f, da = 0.f;
#pragma unroll
            for (int n = 0; n < N; n++) {
                const float s = before[t - t0][n];
                dk += g_row[n] * x.v[n];
                db += g_row[n] * x.sa[n];
                dd += g_row[n] * s;
                da += s * dsa_all[n];
                S[n] = s;
            }
            d_r[at] = from_float<F>(dr);
            d_w[at] = dd * d_me;  // d exp(w) / dw = exp(w)
            d_k[at] = from_float<F>(dk);
            d_v[at] = from_float<F>(dv);
            d_a[at] = from_float<F>(da);
            d_b[at] = from_float<F>(db);

            // G <- dL/dS_{t-1} = diag(d_t) G + a_t dsa_t^T.
#pragma unroll
            for (int n = 0; n < N; n++) {
                g_row[n] = d_me * g_row[n] + a_me * dsa_all[n];
                g_col[n] = x.d[n] * g_col[n] + x.a[n] * dsa;
            }
        }
    }
#pragma unroll
    for (int n = 0; n < N; n++) d_s0[matrix_offset(bh) + n * N + me] = g_col[n];
}

const char* const kWrongHeadSize = "wkv7: head size differs from the compiled WKV_HEAD_SIZE";

template <typename F>
const char* forward(int B, int T, int H, int head_size, const void* r, const float* w, const void* k,
                    const void* v, const void* a, const void* b, const float* s0, void* out, float* sT,
                    float* ckpt, float* sa, void* stream) {
    if (head_size != N) return kWrongHeadSize;
    return launch(forward_kernel<F>, B * H, stream, T, H, static_cast<const F*>(r), w,
                  static_cast<const F*>(k), static_cast<const F*>(v), static_cast<const F*>(a),
                  static_cast<const F*>(b), s0, static_cast<F*>(out), sT, ckpt, sa);
}

template <typename F>
const char* backward(int B, int T, int H, int head_size, const void* r, const float* w, const void* k,
                     const void* v, const void* a, const void* b, const void* d_out, const float* d_sT,
                     const float* ckpt, const float* sa, void* d_r, float* d_w, void* d_k, void* d_v,
                     void* d_a, void* d_b, float* d_s0, void* stream) {
    if (head_size != N) return kWrongHeadSize;
    return launch(backward_kernel<F>, B * H, stream, T, H, static_cast<const F*>(r), w,
                  static_cast<const F*>(k), static_cast<const F*>(v), static_cast<const F*>(a),
                  static_cast<const F*>(b), static_cast<const F*>(d_out), d_sT, ckpt, sa,
                  static_cast<F*>(d_r), d_w, static_cast<F*>(d_k), static_cast<F*>(d_v),
                  static_cast<F*>(d_a), static_cast<F*>(d_b), d_s0);
}

}  // namespace
}  // namespace wkv

#define WKV7_FORWARD_NAMES B, T, H, N, r, w, k, v, a, b, s0, out, sT, ckpt, sa, stream
#define WKV7_BACKWARD_NAMES \
    B, T, H, N, r, w, k, v, a, b, d_out, d_sT, ckpt, sa, d_r, d_w, d_k, d_v, d_a, d_b, d_s0, stream

extern "C" {
const char* wkv7_forward_fp32(WKV7_FORWARD_ARGS) { return wkv::forward<float>(WKV7_FORWARD_NAMES); }
const char* wkv7_forward_bf16(WKV7_FORWARD_ARGS) { return wkv::forward<wkv::bf16>(WKV7_FORWARD_NAMES); }
const char* wkv7_backward_fp32(WKV7_BACKWARD_ARGS) { return wkv::backward<float>(WKV7_BACKWARD_NAMES); }
const char* wkv7_backward_bf16(WKV7_BACKWARD_ARGS) { return wkv::backward<wkv::bf16>(WKV7_BACKWARD_NAMES); }
}
