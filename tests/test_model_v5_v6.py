"""RWKV-5 (x052) and RWKV-6 (x060): BlinkDL's state-dict table, the official init, the state carry,
the rwkv package's logits, chunked BPTT."""


import pytest
import torch

from rwkv_infctx.checkpoint import config_from_state_dict, load_state_into, save_pth
from rwkv_infctx.config import ModelConfig
from rwkv_infctx.model import RWKV

from .helpers import random_model, shared_table

VERSIONS = ["x052", "x060"]


def blinkdl_table(version, C, N, L, V, F, D_mix=32, D_decay=64):
    """BlinkDL's names and shapes (RWKV-v5/src/model.py) for n_embd C, head_size N, dim_ffn F."""
    H = C // N
    table = shared_table(C, L, V)
    for i in range(L):
        p = f"blocks.{i}."
        if version == "x052":
            for name in ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g"):
                table[p + "att." + name] = (1, 1, C)
            table[p + "att.time_decay"] = (H, N)
            ffn_mixes = ("ffn.time_mix_k", "ffn.time_mix_r")
        else:
            for name in ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g"):
                table[p + "att." + name] = (1, 1, C)
            table.update({p + "att.time_maa_w1": (C, 5 * D_mix), p + "att.time_maa_w2": (5, D_mix, C),
                          p + "att.time_decay": (1, 1, C), p + "att.time_decay_w1": (C, D_decay),
                          p + "att.time_decay_w2": (D_decay, C)})
            ffn_mixes = ("ffn.time_maa_k", "ffn.time_maa_r")
        table[p + "att.time_faaaa"] = (H, N)
        for name in ("receptance", "key", "value", "gate", "output"):
            table[p + f"att.{name}.weight"] = (C, C)
        table.update({p + "att.ln_x.weight": (C,), p + "att.ln_x.bias": (C,)})
        table.update({p + name: (1, 1, C) for name in ffn_mixes})
        table.update({p + "ffn.key.weight": (F, C), p + "ffn.receptance.weight": (C, C),
                      p + "ffn.value.weight": (C, F)})
    return table


@pytest.mark.parametrize("version", VERSIONS)
def test_state_dict_matches_blinkdl_table(version):
    cfg = ModelConfig(version=version, n_layer=3, n_embd=256, vocab_size=1000, head_size=64)
    sd = RWKV(cfg).state_dict()
    # dim_ffn = int(C * 3.5) // 32 * 32 = 896 (RWKV-v5/train.py); x060 LoRA ranks 32 (x5) and 64
    expected = blinkdl_table(version, 256, 64, 3, 1000, 896)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def _init_model(version):
    torch.manual_seed(0)
    model = RWKV(ModelConfig(version=version, n_layer=4, n_embd=128, vocab_size=300, head_size=32))
    model.init_weights()
    return model


@pytest.mark.parametrize("version", VERSIONS)
def test_official_init_shared_rules(version):
    model = _init_model(version)
    att0, att3 = model.blocks[0].att, model.blocks[3].att
    for block in model.blocks:
        for zero in (block.att.output.weight, block.ffn.value.weight, block.ffn.receptance.weight):
            assert torch.all(zero == 0)
    # plain orthogonal (no rescaling of tall matrices): key/gate gain 0.1, ffn.key (F, C) gain 1
    for w, gain in ((att0.key.weight, 0.1), (att0.gate.weight, 0.1), (att0.receptance.weight, 1.0)):
        torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(128), atol=1e-5, rtol=0)
    fk = model.blocks[1].ffn.key.weight
    torch.testing.assert_close(fk.T @ fk, torch.eye(128), atol=1e-5, rtol=0)
    assert torch.allclose(att0.ln_x.weight, torch.full((128,), 0.25**0.7))
    assert torch.allclose(att3.ln_x.weight, torch.ones(128)) and torch.all(att3.ln_x.bias == 0)
    # time_decay: -6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * layer / (L - 1)); last layer: power 2
    decay3 = att3.time_decay.reshape(-1)
    n = torch.arange(128, dtype=torch.float64)
    torch.testing.assert_close(decay3.double(), -6 + 5 * (n / 127) ** 2, atol=1e-6, rtol=0)
    assert att0.time_decay.reshape(-1)[0].item() == pytest.approx(-6.0)
    # time_faaaa: layer 0 is the zigzag 0, 0.1, -0.1, ...; the last layer starts at 1.0
    assert att0.time_faaaa.reshape(-1)[:4].tolist() == pytest.approx([0.0, 0.1, -0.1, 0.0])
    assert att3.time_faaaa.reshape(-1)[0].item() == pytest.approx(1.0)
    assert model.emb.weight.abs().max() <= 1e-4


def test_official_init_x052_time_mix():
    model = _init_model("x052")
    ddd = torch.arange(128) / 128
    att0, att3, ffn2 = model.blocks[0].att, model.blocks[3].att, model.blocks[2].ffn
    assert torch.allclose(att0.time_mix_k.view(-1), ddd, atol=1e-6)
    assert torch.allclose(att3.time_mix_v.view(-1), ddd**0.25 + 0.3, atol=1e-6)  # ratio_1_to_almost0 = 1/4
    assert torch.allclose(att3.time_mix_r.view(-1), ddd**0.125, atol=1e-6)
    assert torch.allclose(ffn2.time_mix_k.view(-1), ddd**0.5, atol=1e-6)


def test_official_init_x060_time_maa():
    model = _init_model("x060")
    ddd = torch.arange(128) / 128
    att0, att3, ffn2 = model.blocks[0].att, model.blocks[3].att, model.blocks[2].ffn
    assert torch.allclose(att0.time_maa_x.view(-1), 1 - ddd, atol=1e-6)
    assert torch.allclose(att3.time_maa_v.view(-1), 1 - (ddd**0.25 + 0.3), atol=1e-6)
    assert torch.allclose(att3.time_maa_g.view(-1), 1 - ddd**0.125, atol=1e-6)
    assert torch.allclose(ffn2.time_maa_r.view(-1), 1 - ddd**0.125, atol=1e-6)  # (1/2)**3
    assert torch.all(att0.time_maa_w1 == 0) and torch.all(att0.time_decay_w1 == 0)
    for w2 in (att0.time_maa_w2, att0.time_decay_w2):
        assert 0.009 < w2.abs().max() <= 0.01


@pytest.mark.parametrize("version", VERSIONS)
def test_pth_round_trip_reads_every_dim_from_shapes(version, tmp_path):
    """Non-default head size, dim_ffn and (x060) LoRA ranks, as released large models have."""
    extra = {"mix_lora": 64, "decay_lora": 128} if version == "x060" else {}
    cfg = ModelConfig(version=version, n_layer=2, n_embd=64, vocab_size=97, head_size=32, dim_ffn=96, **extra)
    model = random_model(cfg)
    sd = torch.load(save_pth(model, tmp_path / "m.pth"), weights_only=True)
    file_cfg = config_from_state_dict(sd)
    assert file_cfg == cfg
    other = RWKV(file_cfg)
    load_state_into(other, sd)
    for a, b in zip(other.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
