"""Stop a run halfway, resume it from its checkpoint: the rest of the loss curve is the same.

Lightning restores weights, optimizer, lr schedule and step counter; the data module restores
the data position (``GlobalBatchSampler.resume``), so a resumed run continues mid-epoch with
the very batches the uninterrupted run used.
"""

import csv
import json
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.strategies import SingleDeviceStrategy

from rwkv_infctx.data.datamodule import DEFAULT_SOURCE, RWKVDataModule
from rwkv_infctx.training.module import RWKVModule

MAX_STEPS = 9


class StopAtStep(L.Callback):
    """An interruption: fit ends after this optimizer step, as a killed job would after its checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def small_corpus(tmp_path: Path) -> str:
    """About 770 tokens: 12 samples of 64, 6 batches of 2, so 7 steps cross an epoch boundary."""
    docs = [json.loads(line)["text"] for line in Path(DEFAULT_SOURCE).read_text().splitlines()[:8]]
    text = "\n\n".join(docs)[:3300]
    path = tmp_path / "small.txt"
    path.write_text(text)
    return str(path)


class RestoreAfterSetup(SingleDeviceStrategy):
    """Restores the checkpoint after building the train loader, as DeepSpeed and FSDP do."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


def fit(root: Path, source: str, accumulate: int, ckpt_path=None, stop_at=None, save_every=None, workers=0,
        deepspeed_like=False, magic_prime=None) -> dict:
    L.seed_everything(0)
    module = RWKVModule(n_layer=1, n_embd=32, head_size=16, ctx_len=32, lr_init=1e-2, lr_final=1e-3,
                        warmup_steps=2, export_pth=False, plot_loss=False)
    data = RWKVDataModule(source=source, batch_size=2, sample_len=64, test_split=0, seed=5, num_workers=workers,
                          magic_prime=magic_prime)
    # max_epochs makes Lightning count the steps from the train loader while configuring the
    # optimizer, which a DeepSpeed-like strategy does before it restores the checkpoint
    limits = {"strategy": RestoreAfterSetup("cpu"), "max_epochs": 2, "max_steps": -1} if deepspeed_like else {}
    callbacks = [StopAtStep(stop_at)] if stop_at else []
    if save_every:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=save_every,
                                                             save_top_k=-1))
    logger = L.pytorch.loggers.CSVLogger(root, name="log")
    trainer = L.Trainer(**{"max_steps": MAX_STEPS, **limits}, accelerator="cpu", logger=logger, log_every_n_steps=1,
                        callbacks=callbacks, enable_checkpointing=bool(save_every), enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0, limit_val_batches=0,
                        accumulate_grad_batches=accumulate)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    # with accumulation several micro-batches log under one step: keep them all, in order
    return [(int(r["step"]), float(r["train/loss"]), float(r["train/lr"]), float(r["train/tokens_seen"]))
            for r in rows if r.get("train/loss")]


# 6 batches per epoch: stop in epoch 0, at its end, or in epoch 1; with DataLoader workers (which
# draw samples before Lightning sets the epoch); with the restore order of DeepSpeed/FSDP.
@pytest.mark.parametrize("accumulate,stop_at,workers,deepspeed_like", [
    (1, 3, 0, False), (2, 2, 0, False), (1, 6, 0, False), (1, 6, 2, False), (1, 8, 2, False), (1, 3, 0, True)])
def test_resumed_run_continues_the_uninterrupted_loss_curve(tmp_path, accumulate, stop_at, workers, deepspeed_like):
    source = small_corpus(tmp_path)
    options = {"workers": workers, "deepspeed_like": deepspeed_like}
    whole = fit(tmp_path / "whole", source, accumulate, **options)
    first = fit(tmp_path / "cut", source, accumulate, stop_at=stop_at, save_every=stop_at, **options)
    (ckpt,) = (tmp_path / "cut" / "ckpt").glob(f"epoch=*-step={stop_at}.ckpt")
    rest = fit(tmp_path / "cut", source, accumulate, ckpt_path=str(ckpt), **options)
    assert first == whole[:len(first)]
    assert rest[0][0] == stop_at and len(first) + len(rest) == len(whole)
    assert whole[-1][0] == (11 if deepspeed_like else MAX_STEPS - 1)  # 2 epochs of 6 steps, or MAX_STEPS
    for resumed, uninterrupted in zip(rest, whole[len(first):]):
        # same step, and loss, lr and token count equal to 1e-6 (the CPU runs are deterministic)
        assert resumed[0] == uninterrupted[0]
        assert resumed[1:] == pytest.approx(uninterrupted[1:], rel=1e-6), (resumed, uninterrupted)


@pytest.mark.slow
def test_resumed_magic_prime_run_continues_the_uninterrupted_loss_curve(tmp_path):
    """BlinkDL's sampling: 727 tokens give p = 5 windows of 64, 3 steps per epoch; stop in epoch 1, resume."""
    source = small_corpus(tmp_path)
    whole = fit(tmp_path / "whole", source, 1, magic_prime="auto")
    first = fit(tmp_path / "cut", source, 1, stop_at=4, save_every=4, magic_prime="auto")
    (ckpt,) = (tmp_path / "cut" / "ckpt").glob("epoch=*-step=4.ckpt")
    rest = fit(tmp_path / "cut", source, 1, ckpt_path=str(ckpt), magic_prime="auto")
    assert first == whole[:len(first)] and len(first) + len(rest) == len(whole) and rest[0][0] == 4
    for resumed, uninterrupted in zip(rest, whole[len(first):]):
        assert resumed[0] == uninterrupted[0]
        assert resumed[1:] == pytest.approx(uninterrupted[1:], rel=1e-6), (resumed, uninterrupted)


def cli_fit(root: Path, source: str, pth: Path, max_steps: int, *args: str) -> list[tuple[int, float]]:
    """A CLI fit of config-example.yaml from ``pth`` on ``source``, checkpointing every 2 steps into
    <root>/ckpt; returns metrics.csv's (step, train/loss)."""
    from rwkv_infctx.cli import main

    from .helpers import ROOT, TINY_CLI

    main(["fit", "-c", str(ROOT / "config-example.yaml"), *TINY_CLI, "--data.batch_size", "2", "--data.source", source,
          "--model.load_model", str(pth), "--model.lr_init", "1e-2", "--model.warmup_steps", "0",
          "--model.export_pth", "false", "--model.plot_loss", "false", "--trainer.max_steps", str(max_steps),
          "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
          "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
          "--trainer.callbacks.init_args.dirpath", str(root / "ckpt"),
          "--trainer.callbacks.init_args.every_n_train_steps", "2", *args])
    (metrics,) = root.glob("**/metrics.csv")
    return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(open(metrics)) if r.get("train/loss")]


def test_resume_needs_no_load_model_file(tmp_path):
    """The .pth a run started from is read once, at the start: a resume takes the weights (and the
    sizes the file had, here a dim_ffn the config leaves at its default) from the checkpoint alone."""
    from rwkv_infctx.checkpoint import save_pth

    from .helpers import random_model, tiny_config

    source = small_corpus(tmp_path)
    pth = save_pth(random_model(tiny_config(n_layer=1, n_embd=32, vocab_size=65536, dim_ffn=96)), tmp_path / "base.pth")
    whole = cli_fit(tmp_path / "whole", source, pth, 4, "--trainer.callbacks.init_args.save_top_k", "-1")
    pth.unlink()
    (ckpt,) = (tmp_path / "whole" / "ckpt").glob("epoch=*-step=2.ckpt")
    rest = cli_fit(tmp_path / "resumed", source, pth, 4, "--ckpt_path", str(ckpt))
    assert [s for s, _ in whole] == [0, 1, 2, 3] and [s for s, _ in rest] == [2, 3]
    assert [loss for _, loss in rest] == pytest.approx([loss for _, loss in whole[2:]], rel=1e-6)


def test_fresh_fit_with_a_missing_load_model_file_fails_in_one_line(tmp_path):
    """Outside the CLI (which checks before reading the data) a missing .pth is taken for a resume
    until the trainer starts: without a checkpoint the run stops there, naming the file."""
    from rwkv_infctx.errors import CheckpointError

    from .helpers import tiny_fit

    with pytest.raises(CheckpointError, match=r"^model.load_model: no such file '.*gone.pth'$"):
        tiny_fit(tmp_path, small_corpus(tmp_path), 1, module_args={"load_model": str(tmp_path / "gone.pth")})


def test_pissa_lora_resume_needs_no_load_model_file(tmp_path):
    """PiSSA's adapters start from the loaded weights' SVD; a resume rebuilds them without the .pth
    (and without the SVD): the checkpoint restores adapters and residual base alike."""
    from rwkv_infctx.checkpoint import save_pth

    from .helpers import logged_steps, random_model, tiny_config, tiny_fit

    source = small_corpus(tmp_path)
    pth = save_pth(random_model(tiny_config(n_layer=1, n_embd=32, vocab_size=65536)), tmp_path / "base.pth")
    args = {"load_model": str(pth), "lora": {"r": 4, "init": "pissa"}}
    whole = logged_steps(tiny_fit(tmp_path / "whole", source, 4, checkpoint_every=2, module_args=args))
    pth.unlink()
    (ckpt,) = (tmp_path / "whole" / "ckpt").glob("epoch=*-step=2.ckpt")
    rest = logged_steps(tiny_fit(tmp_path / "resumed", source, 4, ckpt_path=ckpt, module_args=args))
    assert [s for s, *_ in whole] == [0, 1, 2, 3] and [s for s, *_ in rest] == [2, 3]
    assert [loss for _, loss, _ in rest] == pytest.approx([loss for _, loss, _ in whole[2:]], rel=1e-6)
