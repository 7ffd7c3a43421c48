"""Every precision Lightning offers trains, and the carried WKV state stays float32 in all of them."""

import csv
from pathlib import Path

import lightning as L
import pytest
import torch

from rwkv_infctx.data.datamodule import RWKVDataModule
from rwkv_infctx.training.module import RWKVModule


class RecordStateDtypes(L.Callback):
    """The dtypes of the state each block hands to the next chunk, seen in the training forward passes."""

    def __init__(self):
        self.wkv, self.shift = set(), set()

    def on_fit_start(self, trainer, pl_module):
        def hook(block, inputs, output):
            self.wkv.add(output[2].wkv.dtype)
            self.shift.add(output[2].att_shift.dtype)

        pl_module.model.blocks[0].register_forward_hook(hook)


def train(tmp_path, precision: str, accelerator: str = "cpu"):
    """Six steps of a tiny model; returns the trainer, the logged losses and the state dtypes seen."""
    L.seed_everything(0)
    module = RWKVModule(n_layer=1, n_embd=32, head_size=16, ctx_len=32, lr_init=2e-2, lr_final=5e-3,
                        warmup_steps=0, export_pth=False)
    data = RWKVDataModule(batch_size=2, sample_len=64, test_split=0)  # 2 chunks: the state is carried
    record = RecordStateDtypes()
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = L.Trainer(max_steps=6, accelerator=accelerator, devices=1, precision=precision, logger=logger,
                        log_every_n_steps=1, callbacks=[record], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        limit_val_batches=0)
    trainer.fit(module, data)
    losses = [float(r["train/loss"]) for r in csv.DictReader(open(Path(logger.log_dir) / "metrics.csv"))
              if r.get("train/loss")]
    assert len(losses) == 6 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 1.0, losses  # it learns: more than 1 nat in 6 steps
    assert record.wkv == {torch.float32}
    return trainer, record


# On a CPU Lightning runs 16-mixed as bf16-mixed (CPU autocast has no float16); float16 with loss
# scaling is the GPU test below.
@pytest.mark.parametrize("precision, runs_as", [("32-true", "32-true"), ("bf16-mixed", "bf16-mixed"),
                                                ("bf16-true", "bf16-true"), ("16-mixed", "bf16-mixed")])
def test_each_precision_trains_with_a_float32_wkv_state(tmp_path, precision, runs_as):
    trainer, record = train(tmp_path, precision)
    assert trainer.precision == runs_as
    # the token-shift state is an activation: it follows the compute dtype
    if precision == "bf16-true":
        assert record.shift == {torch.bfloat16}


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "32-true"])
def test_gpu_precisions_train_fp16_with_loss_scaling(tmp_path, precision):
    trainer, _ = train(tmp_path, precision, accelerator="gpu")
    assert trainer.precision == precision
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    assert (scaler is not None) == (precision == "16-mixed")  # loss scaling exactly for float16
