"""The model learns: a few dozen Lightning steps on real English prose lower the loss."""

import csv
import math

import lightning as L
import pytest
import torch
import yaml

from rwkv_infctx.data.datamodule import RWKVDataModule
from rwkv_infctx.errors import ConfigError
from rwkv_infctx.training.module import RWKVModule
from rwkv_infctx.training.optim import lr_at, param_groups

from .helpers import ROOT



@pytest.mark.slow
@pytest.mark.parametrize("version", ["x052", "x060", "x070"])
def test_a_few_dozen_steps_on_real_text_lower_the_loss(tmp_path, version):
    torch.manual_seed(0)
    module = RWKVModule(version=version, n_layer=2, n_embd=64, head_size=16, ctx_len=32, lr_init=3e-3,
                        lr_final=1e-3, warmup_steps=5)
    data = RWKVDataModule(batch_size=4, sample_len=128, test_split=0)
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = L.Trainer(max_steps=40, accelerator="cpu", logger=logger, log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, default_root_dir=tmp_path)
    trainer.fit(module, data)
    rows = list(csv.DictReader(open(f"{logger.log_dir}/metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 40
    first, last = losses[0], sum(losses[-5:]) / 5
    assert first > 10.5  # ln(65536) = 11.09: an untrained model knows nothing
    assert last < first - 3.0, (first, last)  # the stated margin: 3 nats in 40 steps
    speeds = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
    assert speeds and min(speeds) > 0
    assert (tmp_path / "lightning_logs" / "version_0" / "rwkv-final.pth").is_file()


def test_optimizer_groups_follow_blinkdl():
    module = RWKVModule(n_layer=2, n_embd=64, head_size=16, vocab_size=100, weight_decay=0.1)
    groups = {g["name"]: g for g in param_groups(module.model, 0.1)}
    ids = lambda g: {id(p) for p in g["params"]}
    named = dict(module.model.named_parameters())
    assert ids(groups["2x"]) == {id(named["blocks.0.att.w0"]), id(named["blocks.1.att.w0"])}
    assert groups["2x"]["lr_scale"] == 2.0
    assert id(named["blocks.0.att.key.weight"]) in ids(groups["decay"])
    assert id(named["blocks.0.att.w1"]) in ids(groups["1x"])  # LoRA matrices are not ".weight": no decay
    v6_model = RWKVModule(version="x060", n_layer=1, n_embd=64, head_size=16, vocab_size=100).model
    v6 = dict(v6_model.named_parameters())
    v6_groups = {g["name"]: ids(g) for g in param_groups(v6_model, 0.0)}
    assert id(v6["blocks.0.att.time_decay"]) in v6_groups["2x"]  # BlinkDL's 2x lr on the decay
    assert id(v6["blocks.0.att.time_faaaa"]) in v6_groups["1x"]
    assert id(named["blocks.0.ln1.weight"]) in ids(groups["1x"])  # 1-D: no decay
    assert "decay" not in {g["name"] for g in param_groups(module.model, 0.0)}


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 1e-3, 1e-4, 10) == 1e-5
    assert abs(lr_at(10, 100, 1e-3, 1e-4, 10) - 1e-3) < 1e-12
    assert abs(lr_at(100, 100, 1e-3, 1e-4, 10) - 1e-4) < 1e-12
    assert abs(lr_at(55, 100, 1e-3, 1e-4, 10) - 5.5e-4) < 1e-12  # cosine midpoint


def test_lr_schedule_exponential_is_rwkv_v5s_geometric_decay():
    def rwkv_v5(step, total, lr_init, lr_final, warmup):  # RWKV-v5/src/trainer.py, my_exit_tokens = 0
        progress = min(1, max(0, (step - warmup + 1) / (total - warmup)))
        lr = lr_init * math.exp(math.log(lr_final / lr_init) * progress)
        return lr * (0.01 + 0.99 * step / warmup) if step < warmup else lr

    for step in (0, 5, 9, 10, 11, 50, 98, 99, 100, 150):
        assert lr_at(step, 100, 1e-3, 1e-5, 10, "exponential") == pytest.approx(rwkv_v5(step, 100, 1e-3, 1e-5, 10), rel=1e-12)
    assert lr_at(99, 100, 1e-3, 1e-5, 10, "exponential") == pytest.approx(1e-5)  # reached at the last step
    assert lr_at(54, 100, 1e-3, 1e-5, 10, "exponential") == pytest.approx(1e-4)  # geometric midpoint
    with pytest.raises(ConfigError, match="lr_final > 0"):
        lr_at(0, 100, 1e-3, 0.0, 10, "exponential")
    with pytest.raises(ConfigError, match="lr_schedule"):
        lr_at(0, 100, 1e-3, 1e-5, 10, "linear")


def test_minipile_recipe_schedule_gives_rwkv_lms_published_lr_column():
    """RWKV-v7/train_temp/README.md: train_log.txt lr of mini-epochs 0..11 (last step of each, 2520 steps)."""
    recipe = yaml.safe_load((ROOT / "RWKV-v7" / "minipile-L12-D768-ctx512.yaml").read_text())
    model, trainer = recipe["model"], recipe["trainer"]
    published = [0.00059975, 0.00059899, 0.00059773, 0.00059597, 0.00059371, 0.00059096,
                 0.00058771, 0.00058399, 0.00057978, 0.00057511, 0.00056999, 0.00056441]
    steps_per_mini_epoch = 40320 // (recipe["data"]["batch_size"] * trainer["devices"])
    ours = [round(lr_at(steps_per_mini_epoch * (e + 1) - 1, trainer["max_steps"], float(model["lr_init"]),
                        float(model["lr_final"]), model["warmup_steps"], model["lr_schedule"]), 8) for e in range(12)]
    assert ours == published


def test_offload_without_the_cpu_adam_op_is_a_one_line_config_error(monkeypatch):
    """ZeRO-Offload needs DeepSpeed's JIT-built CPU Adam; a machine that cannot build it is told so."""
    pytest.importorskip("deepspeed")
    import deepspeed.ops.adam

    from rwkv_infctx.errors import ConfigError
    from rwkv_infctx.training.optim import make_adam
    from rwkv_infctx.training.strategy import offloads_optimizer

    class Unbuildable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Ninja is required to load C++ extensions\nsecond line")

    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", Unbuildable)
    stage_2_offload = type("Strategy", (), {"config": {"zero_optimization": {
        "stage": 2, "offload_optimizer": {"device": "cpu"}}}})()
    assert offloads_optimizer(stage_2_offload)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    with pytest.raises(ConfigError, match="needs DeepSpeed's CPU-Adam op") as info:
        make_adam(groups, 1e-3, (0.9, 0.99), 1e-18, cpu_offload=True)
    assert "\n" not in str(info.value) and "Ninja is required" in str(info.value)
    assert isinstance(make_adam(groups, 1e-3, (0.9, 0.99), 1e-18), torch.optim.AdamW)


@pytest.mark.parametrize("precision, fused", [("32-true", True), ("bf16-mixed", None)])
def test_adamw_is_fused_where_lightning_allows(tmp_path, precision, fused):
    """torch's fused AdamW (several times faster on a CPU), except under Lightning's AMP plugin,
    which refuses gradient clipping with an optimizer that unscales by itself."""
    module = RWKVModule(version="x052", n_layer=1, n_embd=32, head_size=16, vocab_size=97, ctx_len=16,
                        export_pth=False, plot_loss=False)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, default_root_dir=tmp_path)
    batch = {"input_ids": torch.randint(0, 97, (2, 16)), "targets": torch.randint(0, 97, (2, 16)),
             "mask": torch.ones(2, 16)}
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"] is fused
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_loss_for_backward_gives_the_global_per_token_mean():
    """Two devices with 30 and 10 trained tokens: the average of what they backpropagate (DDP's
    gradient average) is the token-weighted mean; with DeepSpeed's extra 1/4, the micro-batch's."""
    from rwkv_infctx.training.module import loss_for_backward

    means, tokens = torch.tensor([2.0, 6.0]), torch.tensor([30.0, 10.0])
    global_tokens = tokens.sum()
    device = [loss_for_backward(means[i], tokens[i], global_tokens, world_size=2) for i in range(2)]
    assert (sum(device) / 2).item() == pytest.approx((2.0 * 30 + 6.0 * 10) / 40)
    one = loss_for_backward(means[0], tokens[0], tokens[0], world_size=1, extra_division=4)
    assert (one / 4 / 4).item() == pytest.approx(2.0 / 4)  # Lightning's and DeepSpeed's divisions
