"""RWKV-7 model: BlinkDL's state-dict table, the official init, the state carry, the rwkv package."""


import pytest
import torch

from rwkv_infctx.checkpoint import config_from_state_dict, load_state_into, save_pth
from rwkv_infctx.config import ModelConfig
from rwkv_infctx.errors import CheckpointError, ConfigError
from rwkv_infctx.model import RWKV

from .helpers import random_model, shared_table, tiny_config

# BlinkDL's x070 table for n_embd=C, head_size=N (H=C/N), LoRA ranks Dw, Da, Dv, Dg, vocab V.
def x070_table(C, N, L, V, Dw, Da, Dv, Dg, F):
    H = C // N
    table = shared_table(C, L, V)
    for i in range(L):
        p = f"blocks.{i}."
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            table[p + "att." + name] = (1, 1, C)
        table.update({p + "att.w1": (C, Dw), p + "att.w2": (Dw, C), p + "att.a1": (C, Da), p + "att.a2": (Da, C),
                      p + "att.g1": (C, Dg), p + "att.g2": (Dg, C), p + "att.r_k": (H, N)})
        if i > 0:
            table.update({p + "att.v0": (1, 1, C), p + "att.v1": (C, Dv), p + "att.v2": (Dv, C)})
        for name in ("receptance", "key", "value", "output"):
            table[p + f"att.{name}.weight"] = (C, C)
        table.update({p + "att.ln_x.weight": (C,), p + "att.ln_x.bias": (C,), p + "ffn.x_k": (1, 1, C),
                      p + "ffn.key.weight": (F, C), p + "ffn.value.weight": (C, F)})
    return table


def blinkdl_x070_table(C, N, L, V, Dw, Da, Dv, Dg, F):
    """The keys BlinkDL's files carry: its RWKV_Tmix_x070 creates v0/v1/v2 in every layer, layer 0
    included (unused there), and its trainer loads them strictly."""
    table = x070_table(C, N, L, V, Dw, Da, Dv, Dg, F)
    table.update({"blocks.0.att.v0": (1, 1, C), "blocks.0.att.v1": (C, Dv), "blocks.0.att.v2": (Dv, C)})
    return table


def test_state_dict_matches_blinkdl_x070_table():
    cfg = ModelConfig(n_layer=3, n_embd=256, vocab_size=1000, head_size=64)
    sd = RWKV(cfg).state_dict()
    # BlinkDL's current LoRA formulas at C=256 (Python round, half to even): decay/iclr 2.5*16/32=1.25 -> 32,
    # value 1.7*16/32=0.85 -> 32, gate 5*16/32=2.5 -> 2 -> 64
    expected = x070_table(256, 64, 3, 1000, 32, 32, 32, 64, 1024)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_official_init_values():
    cfg = ModelConfig(n_layer=4, n_embd=128, vocab_size=300, head_size=32)
    torch.manual_seed(0)
    model = RWKV(cfg)
    model.init_weights()
    att0, att3 = model.blocks[0].att, model.blocks[3].att
    assert torch.all(att0.output.weight == 0) and torch.all(model.blocks[2].ffn.value.weight == 0)
    assert torch.all(att0.w1 == 0) and torch.all(att0.a1 == 0) and torch.all(att3.v1 == 0) and torch.all(att0.g1 == 0)
    assert torch.allclose(att0.k_a, torch.full_like(att0.k_a, 1.02))
    assert torch.allclose(att3.r_k, torch.full_like(att3.r_k, -0.04))
    assert torch.allclose(att0.ln_x.weight, torch.full((128,), 0.25**0.7))
    assert torch.allclose(att3.ln_x.weight, torch.ones(128))
    # token-shift ratios: channel 0 mixes fully with the previous token, layer 0's x_r = 1 - (i/C)^0.2
    i = torch.arange(128) / 128
    assert torch.allclose(att0.x_r.view(-1), 1 - i**0.2, atol=1e-6)
    # w0 at layer 0, channel 0: -6 + 0.5 + 2.5 * zigzag(0) where zigzag(0) = -1 -> -8.0
    assert att0.w0.view(-1)[0].item() == pytest.approx(-8.0)
    # orthogonal LoRA output rows scaled by 0.1: w2 w2^T = 0.01 I
    w2 = att0.w2
    assert torch.allclose(w2 @ w2.T, 0.01 * torch.eye(w2.shape[0]), atol=1e-5)
    assert model.emb.weight.abs().max() <= 1e-4
    # ffn.key as BlinkDL's RWKV-v7/train_temp generate_init_weight: orthogonal_(gain=1.0) on the
    # (4C, C) matrix, so its columns are orthonormal and its spread is 1/sqrt(4C) (not 2/sqrt(4C))
    fk = model.blocks[1].ffn.key.weight
    assert torch.allclose(fk.T @ fk, torch.eye(128), atol=1e-5)
    assert fk.std().item() == pytest.approx(1 / 512**0.5, rel=0.02)


def test_pth_round_trip_and_shape_errors(tmp_path):
    cfg = tiny_config()
    model = random_model(cfg)
    path = save_pth(model, tmp_path / "m.pth")
    sd = torch.load(path, weights_only=True)
    assert config_from_state_dict(sd) == cfg
    other = RWKV(cfg)
    load_state_into(other, sd)
    for a, b in zip(other.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    sd["blocks.1.att.key.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.att\.key\.weight has shape \(3, 3\)"):
        load_state_into(other, sd)
    with pytest.raises(CheckpointError, match="exists"):
        save_pth(model, path)


def test_bad_model_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="multiple of model.head_size"):
        ModelConfig(n_embd=100, head_size=64)
    with pytest.raises(ConfigError, match="x999"):
        ModelConfig(version="x999")


def test_bf16_blinkdl_pth_with_legacy_keys_loads_for_finetuning(tmp_path):
    """Released x070 files are bf16 and may carry layer 0's unused v0/v1/v2."""
    from rwkv_infctx.training.module import RWKVModule
    cfg = tiny_config()
    sd = {k: v.bfloat16() for k, v in random_model(cfg).state_dict().items()}
    sd["blocks.0.att.v0"] = torch.zeros(1, 1, cfg.n_embd, dtype=torch.bfloat16)
    sd["blocks.0.att.v1"] = torch.zeros(cfg.n_embd, 32, dtype=torch.bfloat16)
    sd["blocks.0.att.v2"] = torch.zeros(32, cfg.n_embd, dtype=torch.bfloat16)
    path = save_pth(sd, tmp_path / "released.pth")
    module = RWKVModule(n_layer=cfg.n_layer, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size, head_size=cfg.head_size,
                        load_model=str(path))
    module.prepare_weights()  # what the Trainer runs in setup
    loaded = module.model.state_dict()
    assert loaded["head.weight"].dtype == torch.float32
    assert torch.equal(loaded["head.weight"], sd["head.weight"].float())
    assert "blocks.0.att.v0" not in loaded
