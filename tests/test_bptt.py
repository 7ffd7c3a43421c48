"""Infinite context: chunked training with the state carried gives the whole-sample loss and gradients."""

import pytest
import torch

from rwkv_infctx.training.bptt import chunked_sample_loss
from rwkv_infctx.training.loss import masked_token_loss_sum

from .helpers import chunked_step_grads, random_batch, random_model, rel_err, tiny_config


def loss_and_grads(model, ctx_len, truncate=False, recompute=True, l2wrap=1e-4):
    return chunked_step_grads(model, ctx_len, bptt_truncate=truncate, recompute=recompute, l2wrap=l2wrap)


@pytest.mark.parametrize("version", ["x052", "x060", "x070"])
@pytest.mark.parametrize("ctx_len", [16, 32], ids=["4chunks", "2chunks"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "keep"])
def test_chunked_full_bptt_equals_whole_sample(ctx_len, recompute, version):
    """Loss and every parameter gradient (fp32): relative RMS error < 1e-5 against one chunk."""
    model = random_model(tiny_config(version=version))
    whole, whole_grads = loss_and_grads(model, ctx_len=64)
    chunked, grads = loss_and_grads(model, ctx_len=ctx_len, recompute=recompute)
    assert whole.n_chunks == 1 and chunked.n_chunks == 64 // ctx_len
    assert abs(chunked.loss.item() - whole.loss.item()) < 1e-5
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        assert rel_err(g, whole_grads[name]) < 1e-5, name


def test_bptt_truncate_changes_gradients_but_not_loss():
    model = random_model()
    full, full_grads = loss_and_grads(model, ctx_len=16)
    cut, cut_grads = loss_and_grads(model, ctx_len=16, truncate=True)
    assert abs(cut.loss.item() - full.loss.item()) < 1e-5  # forward is the same
    # gradients through the carried state are gone: the recurrent parameters' gradients differ
    assert rel_err(cut_grads["blocks.0.att.w0"], full_grads["blocks.0.att.w0"]) > 1e-2
    assert rel_err(cut_grads["blocks.1.att.key.weight"], full_grads["blocks.1.att.key.weight"]) > 1e-2


def test_loss_is_mean_over_unmasked_tokens():
    model = random_model()
    ids, tgt, mask = random_batch(pad_last=20)
    with torch.no_grad():
        out = chunked_sample_loss(model, ids, tgt, mask, ctx_len=16)
        logits, _ = model(ids)
        per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none")
    expected = per_token[mask.flatten() > 0].mean()
    assert out.n_tokens.item() == mask.sum().item() == 2 * 64 - 20
    assert abs(out.loss.item() - expected.item()) < 1e-5


def test_l2wrap_adds_gradient_only_at_the_max_logit():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    targets, mask = torch.tensor([[0, 1, 2]]), torch.tensor([[1.0, 1.0, 0.0]])
    plain = torch.autograd.grad(masked_token_loss_sum(logits, targets, mask), logits)[0]
    wrapped = torch.autograd.grad(masked_token_loss_sum(logits, targets, mask, l2wrap=0.5), logits)[0]
    extra = wrapped - plain
    max_val, argmax = logits.detach().max(-1)
    expected = torch.zeros_like(extra)
    for t in range(2):  # the masked third token gets nothing
        expected[0, t, argmax[0, t]] = 0.5 * max_val[0, t]
    torch.testing.assert_close(extra, expected)


@pytest.mark.parametrize("n_chunks", [1, 3])
def test_only_chunks_before_the_last_are_recomputed(n_chunks):
    """With recompute on, every chunk but the last runs its forward twice (forward, then recompute in
    backward); the last one once: its backward comes right after its forward."""
    model = random_model()
    ctx_len = 16
    ids, tgt, mask = random_batch(T=n_chunks * ctx_len)
    runs_per_chunk = [0] * n_chunks

    def count(module, inputs, output):
        chunk = next(c for c in range(n_chunks) if torch.equal(inputs[0], ids[:, c * ctx_len:(c + 1) * ctx_len]))
        runs_per_chunk[chunk] += 1

    handle = model.emb.register_forward_hook(count)
    out = chunked_sample_loss(model, ids, tgt, mask, ctx_len=ctx_len, recompute=True, l2wrap=1e-4)
    out.loss.backward()
    handle.remove()
    assert out.n_chunks == n_chunks
    assert runs_per_chunk == [2] * (n_chunks - 1) + [1]
