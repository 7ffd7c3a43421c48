"""Shared test helpers: tiny configs, randomised models, error measures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from rwkv_infctx.config import ModelConfig
from rwkv_infctx.model import RWKV

ROOT = Path(__file__).resolve().parents[1]  # the repository checkout
# The command-line arguments of a tiny CPU run of config-example.yaml (1 layer, 32 wide, 2 chunks a sample)
TINY_CLI = ["--model.n_layer", "1", "--model.n_embd", "32", "--model.head_size", "16", "--model.ctx_len", "32",
            "--data.sample_len", "64", "--trainer.accelerator", "cpu"]


def run_script(*args, timeout=600) -> subprocess.CompletedProcess:
    """``python <args>`` from the repository root, as a user runs the top-level scripts."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def tiny_config(**overrides) -> ModelConfig:
    values = dict(n_layer=2, n_embd=64, vocab_size=97, head_size=16)
    values.update(overrides)
    return ModelConfig(**values)


def random_model(cfg: ModelConfig | None = None, seed: int = 0, scale: float = 0.2, backend: str = "chunked") -> RWKV:
    """Official init plus noise: the init zeroes output matrices, which would hide most of the math."""
    torch.manual_seed(seed)
    model = RWKV(cfg or tiny_config(), backend)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error of the whole tensor (flash-linear-attention's measure)."""
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp(min=1e-30)).item()


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, ratio: float) -> None:
    """``got`` equals ``ref`` up to a relative RMS error (``rel_err``) below ``ratio``. A NaN or an
    infinity anywhere in ``got`` fails too (its error is then NaN or infinite)."""
    err = rel_err(got, ref)
    assert err < ratio, f"{name}: relative RMS error {err:.3g} is not below {ratio:g}"


# The gradients ``forward_backward`` returns, in order, per WKV version.
WKV_GRAD_NAMES = {7: ["r", "w", "k", "v", "a", "b", "initial_state"], 6: ["r", "w", "k", "v", "u", "initial_state"]}


def assert_wkv_close(ref, got, version: int, ratio: float) -> None:
    """Two ``forward_backward`` results: output, final state and every gradient within ``ratio``."""
    assert_close("output", ref[0], got[0], ratio)
    assert_close("final state", ref[1], got[1], ratio)
    for name, g_ref, g_got in zip(WKV_GRAD_NAMES[version], ref[2], got[2]):
        assert_close(f"grad of {name}", g_ref, g_got, ratio)


def wkv7_inputs(B=2, T=20, H=3, N=8, seed=0, dtype=torch.float32, state=True):
    """WKV-7's (r, w, k, v, a, b) and initial state, of realistic magnitudes: log-decay in the
    model's range, a = -kk, b = kk * iclr."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    r, k, v = rnd(B, T, H, N), rnd(B, T, H, N) * 0.5, rnd(B, T, H, N)
    w = -0.6065 * torch.sigmoid(rnd(B, T, H, N) * 2)
    kk = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
    iclr = torch.sigmoid(rnd(B, T, H, N))
    s0 = rnd(B, H, N, N) * 0.3 if state else None
    xs = [x.to(dtype) for x in (r, w, k, v, -kk, kk * iclr)]
    return xs, s0


def wkv6_inputs(B=2, T=20, H=3, N=8, seed=0, dtype=torch.float32):
    """WKV-6's (r, w, k, v, u) and initial state, of realistic magnitudes: log-decay -exp(w) with w
    around x060's init range (-6 .. -1) and beyond."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    r, k, v = rnd(B, T, H, N), rnd(B, T, H, N) * 0.5, rnd(B, T, H, N)
    w = -torch.exp(rnd(B, T, H, N) * 1.5 - 2.0)
    u = rnd(H, N) * 0.5
    s0 = rnd(B, H, N, N) * 0.3
    return [x.to(dtype) for x in (r, w, k, v, u)], s0


def wkv_inputs(version: int, **sizes):
    return (wkv7_inputs if version == 7 else wkv6_inputs)(**sizes)


def wkv_reference(version: int):
    from rwkv_infctx.ops.reference import wkv6_reference, wkv7_reference

    return wkv7_reference if version == 7 else wkv6_reference


def fill_allocations_with_nan(monkeypatch) -> None:
    """Every buffer made by torch.empty_like or Tensor.new_empty starts as NaN, as
    flash-linear-attention's tests do: a kernel that leaves an element unwritten, or reads one
    before writing it, then fails the comparison instead of passing on leftover zeros."""
    empty_like, new_empty = torch.empty_like, torch.Tensor.new_empty

    def nan_filled(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_filled(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: nan_filled(new_empty(self, *a, **k)))


def forward_backward(fn, xs, s0, seed=1):
    """Run a WKV op and backpropagate fixed random cotangents into the output and the final state.

    Returns (output, final state, [grad of each input..., grad of the initial state]).
    """
    xs = [x.detach().clone().requires_grad_() for x in xs]
    s0 = s0.detach().clone().requires_grad_()
    out, state = fn(*xs, initial_state=s0)
    g = torch.Generator().manual_seed(seed)
    d_out = torch.randn(out.shape, generator=g).to(out.dtype)
    d_state = torch.randn(state.shape, generator=g)
    ((out.float() * d_out.float()).sum() + (state * d_state).sum()).backward()
    return out, state, [x.grad for x in xs] + [s0.grad]


def shared_table(C: int, L: int, V: int) -> dict:
    """The BlinkDL state-dict entries every RWKV version has: embedding, norms, head."""
    table = {"emb.weight": (V, C), "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C),
             "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,)}
    for i in range(L):
        table.update({f"blocks.{i}.{norm}.{part}": (C,) for norm in ("ln1", "ln2") for part in ("weight", "bias")})
    return table


def assert_bf16_close(fast, ref) -> None:
    """A bf16-input run against the fp32 reference (both from ``forward_backward``): bf16 output,
    fp32 state, rel. RMS < 5e-3 for output and state, < 2e-2 for every gradient."""
    assert fast[0].dtype == torch.bfloat16 and fast[1].dtype == torch.float32
    assert_close("output", ref[0], fast[0], 5e-3)
    assert_close("final state", ref[1], fast[1], 5e-3)
    for i, (g_fast, g_ref) in enumerate(zip(fast[2], ref[2])):
        assert_close(f"grad of input {i}", g_ref, g_fast, 2e-2)


def random_batch(B: int = 2, T: int = 64, vocab: int = 97, seed: int = 0, pad_last: int = 0):
    """(input ids, targets, loss mask) of random tokens; the last sample right-padded by pad_last."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T + 1), generator=g)
    mask = torch.ones(B, T)
    if pad_last:
        mask[-1, T - pad_last:] = 0
    return ids[:, :-1], ids[:, 1:], mask


def chunked_step_grads(model, ctx_len: int, device: str = "cpu", T: int = 64, pad_last: int = 11, **loss_options):
    """One training step's SampleLoss and every parameter gradient (on the CPU) for a fixed random
    batch of 2 x ``T`` tokens in chunks of ``ctx_len``, the state carried (chunked_sample_loss's
    options, e.g. bptt_truncate, recompute, l2wrap, pass through)."""
    from rwkv_infctx.training.bptt import chunked_sample_loss

    batch = random_batch(T=T, vocab=model.cfg.vocab_size, pad_last=pad_last)
    model.to(device).zero_grad()
    out = chunked_sample_loss(model, *(x.to(device) for x in batch), ctx_len, **loss_options)
    out.loss.backward()
    return out, {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def in_two_calls(op, version: int, cut: int):
    """``op`` run on tokens [:cut] and then [cut:] with the state carried between the two calls
    (per-token inputs first: r, w, k, v, a, b for WKV-7, r, w, k, v for WKV-6, then u)."""
    per_token = 6 if version == 7 else 4

    def split(*args, initial_state):
        seqs, rest = args[:per_token], args[per_token:]
        o1, s1 = op(*(x[:, :cut] for x in seqs), *rest, initial_state=initial_state)
        o2, s2 = op(*(x[:, cut:] for x in seqs), *rest, initial_state=s1)
        return torch.cat([o1, o2], 1), s2

    return split


def run_rwkv_package(pth_path, body: str, version: str = "x070", timeout: int = 300):
    """Run ``body`` in a child process where ``m`` is the `rwkv` pip package's model of the .pth
    (cpu fp32, ``json``, ``math`` and ``torch`` imported); returns what its last printed line holds
    as JSON. The package runs x070 only in its RWKV_V7_ON mode (its own switch), set in the child alone."""
    script = ("import json, math, torch\nfrom rwkv.model import RWKV\n"
              f"m = RWKV(model={str(pth_path)[:-4]!r}, strategy='cpu fp32')\n" + body)
    env = {k: v for k, v in os.environ.items() if k != "RWKV_V7_ON"}
    if version == "x070":
        env["RWKV_V7_ON"] = "1"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          env={**env, "RWKV_JIT_ON": "0"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rwkv_package_logits(path, tokens: list[int], version: str, time_state_v7: bool = False) -> torch.Tensor:
    """Logits (T, V) of the `rwkv` pip package (fp32, CPU) on the .pth at ``path`` (see run_rwkv_package).

    The package loads a v5/v6 file's att.time_state itself but ignores it for x070;
    ``time_state_v7`` then starts from the file's time_state as given ([H, value, key]: its layout)."""
    body = (
        "state = None\n"
        f"if {time_state_v7!r}:\n"
        f"    sd = torch.load({str(path)!r}, weights_only=True)\n"
        "    state = m.generate_zero_state()\n"
        "    for i in range(m.n_layer):\n"
        "        state[i * 3 + 1] = sd[f'blocks.{i}.att.time_state'].float().clone()\n"
        f"out, _ = m.forward({list(tokens)}, state, full_output=True)\n"
        "print(json.dumps(out.tolist()))\n"
    )
    return torch.tensor(run_rwkv_package(path, body, version))


def tiny_fit(root, source: str, max_steps: int, callbacks=(), ckpt_path=None, checkpoint_every: int = 0,
             module_args: dict | None = None, data_args: dict | None = None, **trainer_args):
    """A CPU fit of a 1-layer, 32-wide RWKV-7 on 64-token samples (chunks of 32), logging every step
    to <root>/log/version_N/metrics.csv; with ``checkpoint_every``, a ModelCheckpoint into <root>/ckpt
    (every step checkpoint kept, and last.ckpt). Returns the trainer."""
    import lightning as L

    from rwkv_infctx.data.datamodule import RWKVDataModule
    from rwkv_infctx.training.module import RWKVModule

    L.seed_everything(0)
    module = RWKVModule(**{**dict(n_layer=1, n_embd=32, head_size=16, ctx_len=32, lr_init=1e-2, lr_final=1e-3,
                                  warmup_steps=2, export_pth=False, plot_loss=False), **(module_args or {})})
    data = RWKVDataModule(**{**dict(source=source, batch_size=2, sample_len=64, test_split=0, seed=5), **(data_args or {})})
    callbacks = list(callbacks)
    if checkpoint_every:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=f"{root}/ckpt", every_n_train_steps=checkpoint_every,
                                                             save_top_k=-1, save_last=True))
    trainer = L.Trainer(**{**dict(max_steps=max_steps, accelerator="cpu", log_every_n_steps=1, limit_val_batches=0,
                                  enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                                  enable_checkpointing=bool(checkpoint_every),
                                  logger=L.pytorch.loggers.CSVLogger(root, name="log")), **trainer_args},
                        callbacks=callbacks)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


def logged_steps(trainer) -> list[tuple[int, float, float]]:
    """(step, train/loss, train/lr) of every logged training row of a ``tiny_fit``."""
    import csv
    from pathlib import Path

    rows = csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv"))
    return [(int(r["step"]), float(r["train/loss"]), float(r["train/lr"])) for r in rows if r.get("train/loss")]
