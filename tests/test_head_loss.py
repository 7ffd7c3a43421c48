"""The sliced head + loss op gives the loss and gradients of the plain head and the logits-level loss."""

import pytest
import torch
import torch.nn.functional as F

from rwkv_infctx.ops.head_loss import linear_loss_sum
from rwkv_infctx.training.loss import masked_token_loss_sum

from .helpers import rel_err


def loss_and_grads(loss_fn, hidden, weight):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = loss_fn(hidden, weight) * 0.37  # an incoming gradient other than 1
    loss.backward()
    return loss, hidden.grad, weight.grad


@pytest.mark.parametrize("l2wrap", [0.0, 1e-2])
@pytest.mark.parametrize("slice_tokens", [5, 64, None], ids=["slices5", "slices64", "default"])
def test_sliced_head_loss_equals_plain_head_and_loss(l2wrap, slice_tokens):
    g = torch.Generator().manual_seed(0)
    B, T, C, V = 2, 23, 16, 97
    hidden, weight = torch.randn(B, T, C, generator=g), torch.randn(V, C, generator=g) * 2
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()

    def plain(h, w):
        return masked_token_loss_sum(F.linear(h, w), targets, mask, l2wrap)

    def sliced(h, w):
        return linear_loss_sum(h, w, targets, mask, l2wrap, slice_tokens)

    expected, sliced_out = loss_and_grads(plain, hidden, weight), loss_and_grads(sliced, hidden, weight)
    assert rel_err(sliced_out[0], expected[0]) < 1e-6
    assert rel_err(sliced_out[1], expected[1]) < 1e-5  # w.r.t. the hidden states
    assert rel_err(sliced_out[2], expected[2]) < 1e-5  # w.r.t. the head weight
    if l2wrap:  # the push is large enough here to be seen
        assert rel_err(loss_and_grads(lambda h, w: linear_loss_sum(h, w, targets, mask), hidden, weight)[2],
                       expected[2]) > 1e-3
    with torch.no_grad():
        assert rel_err(sliced(hidden, weight), expected[0] / 0.37) < 1e-6


def test_sliced_head_loss_under_bf16_autocast_equals_the_plain_path():
    """bf16 logits (as autocast gives the head): same loss, same bf16-rounded gradients."""
    g = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(3, 11, 16, generator=g), torch.randn(97, 16, generator=g)
    targets, mask = torch.randint(0, 97, (3, 11), generator=g), torch.ones(3, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss_and_grads(lambda h, w: masked_token_loss_sum(F.linear(h, w), targets, mask, 1e-2),
                                  hidden, weight)
        sliced = loss_and_grads(lambda h, w: linear_loss_sum(h, w, targets, mask, 1e-2, 4), hidden, weight)
    assert sliced[0].dtype == torch.float32
    assert rel_err(sliced[0], expected[0]) < 1e-5
    assert rel_err(sliced[1], expected[1]) < 1e-2 and rel_err(sliced[2], expected[2]) < 1e-2


def test_the_head_module_returns_logits_or_the_loss():
    from rwkv_infctx.model.layers import Head

    torch.manual_seed(0)
    head = Head(8, 11)
    x, targets, mask = torch.randn(2, 3, 8), torch.randint(0, 11, (2, 3)), torch.ones(2, 3)
    logits = head(x)
    assert logits.shape == (2, 3, 11)
    torch.testing.assert_close(head(x, targets, mask), masked_token_loss_sum(logits, targets, mask))


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_theirs():
    """LoRA and state tuning freeze the head: its gradient is not computed, the rest is unchanged."""
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(2, 9, 16, generator=g), torch.randn(97, 16, generator=g)
    targets, mask = torch.randint(0, 97, (2, 9), generator=g), torch.ones(2, 9)
    h = hidden.clone().requires_grad_()
    (linear_loss_sum(h, weight, targets, mask, 1e-2, 4) * 0.37).backward()
    expected = loss_and_grads(lambda x, w: masked_token_loss_sum(F.linear(x, w), targets, mask, 1e-2), hidden, weight)
    assert weight.grad is None
    assert rel_err(h.grad, expected[1]) < 1e-5


def test_calls_sharing_one_weight_gradient_give_the_summed_gradient_once():
    """Chunks share one head-weight gradient (returned by the last backward): same gradients as
    separate calls; losses weighted unequally are refused rather than given a wrong gradient."""
    from rwkv_infctx.ops.head_loss import SharedWeightGrad

    g = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(3, 10, 16, generator=g), torch.randn(97, 16, generator=g)
    targets, mask = torch.randint(0, 97, (3, 10), generator=g), torch.ones(3, 10)

    def in_parts(shared, scales=(1.0, 1.0, 1.0)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        sink = SharedWeightGrad() if shared else None
        total = sum(scale * linear_loss_sum(h[:, i:i + 4], w, targets[:, i:i + 4], mask[:, i:i + 4], 1e-2,
                                            weight_grad=sink)
                    for scale, i in zip(scales, range(0, 10, 4)))
        (total * 0.37).backward()
        return h.grad, w.grad

    separate, shared = in_parts(False), in_parts(True)
    assert rel_err(shared[0], separate[0]) < 1e-6 and rel_err(shared[1], separate[1]) < 1e-6
    with pytest.raises(RuntimeError, match="equal weight"):
        in_parts(True, scales=(1.0, 2.0, 1.0))
