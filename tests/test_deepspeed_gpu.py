"""DeepSpeed ZeRO 1/2/3 (and offload) through Lightning on one GPU: train, resume, export (marker gpu).

Lightning's DeepSpeed strategy refuses a CPU, so these run only where CUDA is available; on the
CPU, tests/test_export_deepspeed.py covers the checkpoint-folder export.
"""

import csv
import glob
from pathlib import Path

import pytest
import torch

from .helpers import run_script

TINY = ["--model.n_layer", "2", "--model.n_embd", "128", "--model.head_size", "64", "--model.ctx_len", "64",
        "--model.lr_init", "3e-3", "--model.warmup_steps", "0", "--data.sample_len", "256", "--data.batch_size", "2",
        "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
        "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.callbacks", "null", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps", "3", "--trainer.callbacks.save_top_k", "-1"]
STAGES = ["deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
          "deepspeed_stage_3_offload"]


def run(*args):
    proc = run_script(*args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def fit(out: Path, strategy: str, *args) -> list[dict]:
    run("lightning_trainer.py", "fit", "-c", "config-example.yaml", *TINY, "--trainer.strategy", strategy,
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out), *args)
    metrics = sorted(glob.glob(str(out / "**" / "metrics.csv"), recursive=True))[-1]
    return [r for r in csv.DictReader(open(metrics)) if r.get("train/loss")]


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", STAGES)
def test_deepspeed_stage_trains_resumes_and_exports(tmp_path, strategy):
    if "offload" in strategy:
        from deepspeed.ops.op_builder import CPUAdamBuilder

        if not CPUAdamBuilder().is_compatible(verbose=False):
            pytest.skip("DeepSpeed's CPU-Adam op cannot be built here")
    rows = fit(tmp_path, strategy)
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) == 6 and losses[-1] < losses[0]
    peak = max(float(r["train/peak_mem_gib"]) for r in rows)
    print(f"{strategy}: peak {peak:.3f} GiB, losses {losses}")

    # the checkpoint is a DeepSpeed folder; the export of it equals the rwkv-final.pth of the run
    folders = sorted(p for p in glob.glob(str(tmp_path / "**" / "*step=6.ckpt"), recursive=True))
    assert folders and Path(folders[0]).is_dir()
    exported = tmp_path / "exported.pth"
    run("export_checkpoint.py", folders[0], str(exported))
    (final,) = glob.glob(str(tmp_path / "**" / "rwkv-final.pth"), recursive=True)
    a, b = torch.load(exported, weights_only=True), torch.load(final, weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].float(), b[name].float(), rtol=1e-2, atol=1e-3, msg=name)

    # resume from the step-3 folder: the same steps 3..5 as the uninterrupted run (bf16: loose)
    (step3,) = glob.glob(str(tmp_path / "**" / "*step=3.ckpt"), recursive=True)
    resumed = fit(tmp_path / "resumed", strategy, "--ckpt_path", step3)
    assert [int(r["step"]) for r in resumed] == [3, 4, 5]
    assert [float(r["train/loss"]) for r in resumed] == pytest.approx(losses[3:], rel=2e-2)


@pytest.mark.gpu
def test_deepspeed_gradient_accumulation_counts_optimizer_steps(tmp_path):
    """accumulate_grad_batches=2 under DeepSpeed: max_steps counts optimizer updates, each of 2
    micro-batches (DeepSpeed takes over the accumulation from Lightning)."""
    rows = fit(tmp_path, "deepspeed_stage_2", "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "3")
    assert sorted({int(r["step"]) for r in rows}) == [0, 1, 2]
    assert float(rows[-1]["train/tokens_seen"]) == 3 * 2 * 2 * 256  # steps x micro-batches x batch x tokens
    assert float(rows[-1]["train/step_tokens"]) == 2 * float(rows[-1]["train/micro_batch_tokens"]) == 2 * 2 * 256


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_stage_2", "deepspeed_stage_3"])
def test_lora_and_state_tuning_train_and_export_merged_under_each_strategy(tmp_path, strategy):
    """LoRA r=8 plus a learned state, everything else frozen: the loss falls, and the checkpoint's
    export (LoRA merged, alpha given for a DeepSpeed folder) equals the run's rwkv-final.pth."""
    rows = fit(tmp_path, strategy, "--model.lora", "{r: 8, alpha: 16}", "--model.train_state", "true",
               "--model.state_lr", "0.1")
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) == 6 and losses[-1] < losses[0]
    (checkpoint,) = glob.glob(str(tmp_path / "**" / "*step=6.ckpt"), recursive=True)
    exported = tmp_path / "exported.pth"
    run("export_checkpoint.py", checkpoint, str(exported), "--lora_alpha", "16")
    (final,) = glob.glob(str(tmp_path / "**" / "rwkv-final.pth"), recursive=True)
    a, b = torch.load(exported, weights_only=True), torch.load(final, weights_only=True)
    assert a.keys() == b.keys() and "blocks.0.att.time_state" in a
    for name in a:
        torch.testing.assert_close(a[name].float(), b[name].float(), rtol=1e-2, atol=1e-3, msg=name)
