"""Every RWKV version: the state carry, the backends, and the `rwkv` pip package's logits."""

import pytest
import torch

from rwkv_infctx.checkpoint import save_pth
from rwkv_infctx.config import ModelConfig

from .helpers import random_model, rel_err, run_rwkv_package, tiny_config

VERSIONS = ["x052", "x060", "x070"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("split", [1, 16, 33])
def test_chunked_forward_equals_whole_forward(version, split):
    """Logits and final state of T tokens equal those of two calls with the state carried (fp32).

    v5/v6 states grow to a few hundred (decays close to 1, no normalisation), so the state is
    compared by relative RMS error; other splits move the WKV block boundaries (fp32 rounding)."""
    model = random_model(tiny_config(version=version))
    idx = torch.randint(0, 97, (2, 48))
    with torch.no_grad():
        logits, state = model(idx)
        l1, s1 = model(idx[:, :split])
        l2, s2 = model(idx[:, split:], s1)
    torch.testing.assert_close(torch.cat([l1, l2], 1), logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(s2, state):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("version", VERSIONS)
def test_reference_and_chunked_backends_agree(version):
    model = random_model(tiny_config(version=version))
    idx = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        fast, _ = model(idx)
        model.set_wkv_backend("reference")
        slow, _ = model(idx)
    assert rel_err(fast, slow) < 1e-5


@pytest.mark.parametrize("version", VERSIONS)
def test_rwkv_pip_package_gives_the_same_logits(version, tmp_path):
    """A .pth we write loads in the `rwkv` package (v5.2 / v6.0 / x070 mode) and gives our logits (fp32, 1e-4)."""
    cfg = ModelConfig(version=version, n_layer=3, n_embd=128, vocab_size=300, head_size=32)
    model = random_model(cfg, scale=0.1)
    path = save_pth(model, tmp_path / "m.pth")
    tokens = torch.randint(0, 300, (1, 29), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(tokens)[0][0]
    body = (f"out, _ = m.forward({tokens[0].tolist()}, None, full_output=True)\n"
            "print(json.dumps([getattr(m, 'version', 7.0), out.tolist()]))\n")
    their_version, theirs = run_rwkv_package(path, body, version)
    assert their_version == {"x052": 5.2, "x060": 6.0, "x070": 7.0}[version]
    assert (ours - torch.tensor(theirs)).abs().max().item() < 1e-4


@pytest.mark.parametrize("version", ["x052", "x060"])
def test_state_tuned_pth_time_state_round_trip_and_rwkv_package_logits(version, tmp_path):
    """att.time_state (BlinkDL's [H, value, key]) becomes our initial [key, value] state and back;
    the rwkv package starts from it too, so equal logits prove the layout."""
    from rwkv_infctx.checkpoint import config_from_state_dict, load_pth, load_state_into
    from rwkv_infctx.model import RWKV

    cfg = ModelConfig(version=version, n_layer=2, n_embd=64, vocab_size=100, head_size=32)
    sd = dict(random_model(cfg, scale=0.1).state_dict())
    g = torch.Generator().manual_seed(5)
    for i in range(cfg.n_layer):
        sd[f"blocks.{i}.att.time_state"] = torch.randn(cfg.n_head, 32, 32, generator=g)
    path = save_pth(sd, tmp_path / "tuned.pth")
    model = RWKV(config_from_state_dict(load_pth(path)))
    load_state_into(model, load_pth(path), str(path))
    assert torch.equal(model.empty_state(1).wkv[1, 0], sd["blocks.1.att.time_state"].transpose(-1, -2))
    again = torch.load(save_pth(model, tmp_path / "again.pth"), weights_only=True)
    assert torch.equal(again["blocks.0.att.time_state"], sd["blocks.0.att.time_state"])

    tokens = [3, 14, 15, 92, 65, 35]
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0][0]
    body = f"out, _ = m.forward({tokens}, None, full_output=True)\nprint(json.dumps(out.tolist()))\n"
    theirs = torch.tensor(run_rwkv_package(path, body, version))
    assert (ours - theirs).abs().max().item() < 1e-4
    zero_start = RWKV(model.cfg)
    load_state_into(zero_start, {k: v for k, v in sd.items() if "time_state" not in k})
    with torch.no_grad():
        assert (zero_start(torch.tensor([tokens]))[0][0] - ours).abs().max() > 1e-3  # the state matters
