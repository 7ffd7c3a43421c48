"""Finetuning: LoRA (peft), state tuning, freezing by patterns, and their exports."""

import pytest
import torch

from rwkv_infctx.checkpoint import IGNORED_KEYS, load_pth, save_pth
from rwkv_infctx.config import ModelConfig
from rwkv_infctx.errors import CheckpointError, ConfigError
from rwkv_infctx.model.adapters import (
    LORA_META,
    LoraConfig,
    adapter_state_dict,
    check_exports,
    export_state_dict,
    prepare_finetuning,
    save_exports,
    state_only_dict,
)
from rwkv_infctx.scripts.dragon_test import load_model
from rwkv_infctx.training.bptt import chunked_sample_loss
from rwkv_infctx.training.optim import param_groups

from .helpers import chunked_step_grads, random_batch, random_model, rel_err, rwkv_package_logits, tiny_config


def finetuned(version="x070", lora=None, train_state=False, train_only=(), train_also=(), freeze=(), seed=0,
              cfg=None):
    model = random_model(cfg or tiny_config(version=version), seed=seed)
    lora = prepare_finetuning(model, lora, train_state, list(train_only), list(train_also), list(freeze), None)
    return model, lora


def perturb_trainable(model, scale=0.1, seed=7):
    """Adapters and state away from their no-op start, as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def train_steps(model, steps=3, lr=1e-2, weight_decay=0.1, ctx_len=16, state_lr_scale=1.0):
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay, state_lr_scale), lr=lr)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        out = chunked_sample_loss(model, *random_batch(T=32, seed=step), ctx_len)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    return optimizer, losses


@pytest.mark.parametrize("setup, trained", [
    (dict(lora=LoraConfig(r=4)), lambda n: ".lora_" in n),
    (dict(lora=LoraConfig(r=4, targets=["att.key"]), train_also=["ln"]),
     lambda n: ".att.key.lora_" in n or n.split(".")[-2].startswith("ln")),
    (dict(train_state=True), lambda n: n == "initial_wkv"),
    (dict(lora=LoraConfig(r=4), train_state=True, freeze=["blocks.0.*"]),
     lambda n: n == "initial_wkv" or (".lora_" in n and n.startswith("blocks.1."))),
    (dict(train_only=["blocks.1.*", "head.*"]), lambda n: n.startswith(("blocks.1.", "head."))),
    (dict(freeze=["emb.*"]), lambda n: n != "emb.weight"),
], ids=["lora", "lora+ln", "state", "lora+state-layer0", "train_only", "freeze"])
def test_only_the_intended_parameters_change(setup, trained):
    """Every tensor compared before and after 3 AdamW steps with weight decay: frozen ones are
    bit-identical and absent from the optimizer, the others all moved."""
    model, _ = finetuned(**setup)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer, _ = train_steps(model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in in_optimizer) == trained(name) == p.requires_grad, name
    for name, value in model.state_dict().items():
        changed = not torch.equal(value, before[name])
        assert changed == trained(name), name


def test_lora_at_init_is_an_exact_no_op():
    base = random_model(tiny_config())
    idx = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        expected = base(idx)[0]
        prepare_finetuning(base, LoraConfig(r=8, dropout=0.1), False, [], [], [], None)
        base.eval()
        assert torch.equal(base(idx)[0], expected)


@pytest.mark.parametrize("niter", [0, 2])
def test_pissa_init_reproduces_the_base_weights_after_merging(niter):
    base = random_model(tiny_config())
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model, lora = finetuned(lora=LoraConfig(r=4, init="pissa", pissa_niter=niter))
    assert not torch.equal(model.blocks[0].att.key.base_layer.weight, original["blocks.0.att.key.weight"])
    merged = export_state_dict(model, lora)
    assert merged.keys() == original.keys()
    for key, value in original.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("version", ["x060", "x070"])
def test_merged_export_equals_the_adapted_model_and_the_rwkv_package(version, tmp_path):
    """LoRA and a learned state folded into a BlinkDL .pth: our load_model and the `rwkv` package
    give the adapted model's logits (fp32, 1e-4); the adapter file on the base gives them too."""
    cfg = ModelConfig(version=version, n_layer=2, n_embd=64, vocab_size=100, head_size=32)
    model, lora = finetuned(cfg=cfg, lora=LoraConfig(r=4, alpha=8), train_state=True, train_also=["ln"])
    base_path = save_pth(random_model(cfg), tmp_path / "base.pth")
    perturb_trainable(model)
    files = save_exports(model, lora, tmp_path / "rwkv-final.pth", adapter=True, state=True)
    tokens = [3, 14, 15, 92, 65, 35, 89, 79]
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0][0]
        assert (load_model(str(files[0]))(torch.tensor([tokens]))[0][0] - ours).abs().max() < 1e-5
        on_base = load_model(str(base_path), adapter=str(files[1]))
        assert (on_base(torch.tensor([tokens]))[0][0] - ours).abs().max() < 1e-5
    state_file = torch.load(files[2], weights_only=True)
    assert sorted(state_file) == [f"blocks.{i}.att.time_state" for i in range(2)]
    theirs = rwkv_package_logits(files[0], tokens, version, time_state_v7=version == "x070")
    assert (ours - theirs).abs().max().item() < 1e-4


def test_lightning_checkpoint_with_lora_resumes_and_exports_merged(tmp_path):
    """A .ckpt holds peft's names: a resumed module loads it (adapters and optimizer state), and
    export_checkpoint folds the adapters in."""
    import lightning as L

    from rwkv_infctx.scripts.export_checkpoint import export
    from rwkv_infctx.training.module import RWKVModule

    hp = dict(n_layer=2, n_embd=64, vocab_size=97, head_size=16, ctx_len=16, lr_init=1e-2, warmup_steps=0,
              plot_loss=False, export_pth=False, lora=dict(r=4, alpha=8), train_state=True, state_lr=0.5)
    batches = [dict(zip(("input_ids", "targets", "mask"), random_batch(T=32, seed=s))) for s in range(4)]

    def fit(max_steps, ckpt_path=None):
        module = RWKVModule(**hp)
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path, accumulate_grad_batches=2)
        trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None), ckpt_path=ckpt_path)
        return module, trainer

    module, trainer = fit(1)
    ckpt = tmp_path / "one.ckpt"
    trainer.save_checkpoint(ckpt)
    assert any(".lora_A.default." in k for k in torch.load(ckpt, weights_only=True)["state_dict"])
    groups = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert groups["state"] == pytest.approx(groups["1x"] * 50)

    exported = load_pth(export(str(ckpt), str(tmp_path / "merged.pth")))
    expected = export_state_dict(module.model, module.lora)
    assert exported.keys() == {k if k != "initial_wkv" else "x" for k in expected} - {"x"} | {
        "blocks.0.att.time_state", "blocks.1.att.time_state"} | set(IGNORED_KEYS)  # every x070 .pth: layer 0's v0/v1/v2
    for key, value in expected.items():
        if key != "initial_wkv":
            assert torch.equal(exported[key], value), key
    # --only adapter / state: the files fit's export_adapter / export_state would have written
    adapter = torch.load(export(str(ckpt), str(tmp_path / "adapter.pth"), only="adapter"), weights_only=True)
    expected_adapter = adapter_state_dict(module.model, module.lora)
    assert adapter.keys() == expected_adapter.keys() and adapter[LORA_META] == expected_adapter[LORA_META]
    for key in expected_adapter.keys() - {LORA_META}:
        assert torch.equal(adapter[key], expected_adapter[key]), key
    state = torch.load(export(str(ckpt), str(tmp_path / "state.pth"), only="state"), weights_only=True)
    assert state.keys() == state_only_dict(module.model).keys()
    assert all(torch.equal(state[k], v) for k, v in state_only_dict(module.model).items())
    with pytest.raises(CheckpointError, match="exists; pass --overwrite"):
        export(str(ckpt), str(tmp_path / "state.pth"), only="state")
    doubled = load_pth(export(str(ckpt), str(tmp_path / "doubled.pth"), lora_alpha=16))  # alpha given: 2x the delta
    key = "blocks.1.att.key.weight"
    base = module.model.blocks[1].att.key.base_layer.weight
    torch.testing.assert_close(doubled[key] - base, 2 * (exported[key] - base))

    resumed, trainer2 = fit(2, ckpt_path=ckpt)
    assert trainer2.global_step == 2
    moments = trainer2.optimizers[0].state_dict()["state"]
    assert len(moments) == sum(p.requires_grad for p in resumed.model.parameters())
    assert all(m["step"].item() == 2 for m in moments.values())  # 1 restored + 1 new: not a fresh optimizer


def chunked_equals_whole(model):
    whole, whole_grads = chunked_step_grads(model, 64)
    chunked, grads = chunked_step_grads(model, 16)
    assert chunked.n_chunks == 4 and abs(chunked.loss.item() - whole.loss.item()) < 1e-5
    assert grads.keys() == whole_grads.keys()
    for name, g in grads.items():
        assert g.abs().sum() > 0, name
        assert rel_err(g, whole_grads[name]) < 1e-5, name


@pytest.mark.parametrize("version", ["x052", "x060", "x070"])
def test_chunked_full_bptt_with_lora_and_state_equals_one_chunk(version):
    model, _ = finetuned(version=version, lora=LoraConfig(r=4), train_state=True)
    perturb_trainable(model)
    chunked_equals_whole(model)


def test_state_tuning_learns_a_fixed_prefix_with_every_weight_frozen(tmp_path):
    """Every sample is one fixed 16-token text: only a learned starting state can tell the model
    its first tokens. The state round-trips through the .pth (time_state) with equal logits."""
    model, _ = finetuned(train_state=True)
    text = torch.randint(0, 97, (1, 17), generator=torch.Generator().manual_seed(11))
    ids, targets, mask = text[:, :-1], text[:, 1:], torch.ones(1, 16)
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1.0)  # BlinkDL's state-tuning lr
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        out = chunked_sample_loss(model, ids, targets, mask, 16)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    path = save_pth(export_state_dict(model, None), tmp_path / "state-tuned.pth")
    assert "blocks.0.att.time_state" in torch.load(path, weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(path))(ids)[0], model(ids)[0], rtol=0, atol=1e-5)


def test_bad_finetuning_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="matches no parameter"):
        finetuned(train_only=["blocks.9.*"])
    with pytest.raises(ConfigError, match="match no Linear"):
        finetuned(lora=LoraConfig(r=4, targets=["att.gate"]))  # x070 has no gate Linear
    with pytest.raises(ConfigError, match="exclude each other"):
        finetuned(lora=LoraConfig(r=4), train_only=["head.*"])
    with pytest.raises(ConfigError, match="train_also adds"):
        finetuned(train_also=["ln"])
    assert LoraConfig.coerce({"r": 0}) is None and LoraConfig.coerce(None) is None
    pissa, lora = finetuned(lora=LoraConfig(r=4, init="pissa"))
    with pytest.raises(ConfigError, match="merged only"):
        check_exports(pissa, lora, adapter=True, state=False)
    with pytest.raises(ConfigError, match="no state to export"):
        check_exports(pissa, lora, adapter=False, state=True)
