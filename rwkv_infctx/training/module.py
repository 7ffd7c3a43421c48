"""The LightningModule: builds (or loads) the model, runs the chunked BPTT loss, logs, exports."""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ..checkpoint import check_compatible, load_pth, load_state_into, pth_config
from ..config import ARCHITECTURE_SIZES, ModelConfig, Version
from ..data.tokenizer import load_tokenizer
from ..errors import ConfigError, DataError
from ..eval.lambada import read_lambada, score_target
from ..files import first_unused
from ..model import RWKV
from ..model.adapters import LoraConfig, check_exports, describe_training, prepare_finetuning, save_exports
from ..ops import CTX_LEN_MULTIPLE, resolve_backend
from .bptt import chunked_sample_loss
from .optim import lr_at, make_adam, param_groups
from .plot import LossCurve
from .safety import StopOnSignal, adam_eps_for, check_resumable, safety_callbacks
from .strategy import can_fuse_adam, gathered_parameters, offloads_optimizer, pad_to_longest_across_ranks, zero_stage_3


class RWKVModule(L.LightningModule):
    def __init__(
        self,
        version: Version = "x070",
        n_layer: int = 4,
        n_embd: int = 256,
        vocab_size: int = 65536,
        head_size: int = 64,
        dim_ffn: int | None = None,
        decay_lora: int | None = None,
        iclr_lora: int | None = None,
        value_lora: int | None = None,
        gate_lora: int | None = None,
        mix_lora: int | None = None,
        ctx_len: int = 256,
        bptt_truncate: bool = False,
        recompute_chunks: bool = True,
        load_model: str | None = None,
        wkv_backend: str = "chunked",
        wkv_fallback: str | None = None,
        lr_init: float = 6e-4,
        lr_final: float = 6e-5,
        lr_schedule: Literal["cosine", "exponential"] = "cosine",
        warmup_steps: int = 10,
        beta1: float = 0.9,
        beta2: float = 0.99,
        adam_eps: float = 1e-18,
        weight_decay: float = 0.0,
        l2wrap: float = 1e-4,
        export_pth: bool = True,
        plot_loss: bool = True,
        skip_nonfinite_steps: int = 0,
        lora: LoraConfig | None = None,
        train_state: bool = False,
        state_lr: float | None = None,
        train_also: list[str] | None = None,
        train_only: list[str] | None = None,
        freeze: list[str] | None = None,
        load_adapter: str | None = None,
        export_adapter: bool = False,
        export_state: bool = False,
        val_lambada: str | None = None,
    ):
        """RWKV language model trained with infinite context (chunked BPTT).

        Args:
            version: RWKV generation: x052 (v5), x060 (v6) or x070 (v7).
            n_layer: Number of blocks.
            n_embd: Width of the residual stream.
            vocab_size: Tokenizer vocabulary size (65536 for the world tokenizer).
            head_size: WKV head size; n_embd must be a multiple of it.
            dim_ffn: Channel-mix hidden width; null means the version's default (4 x n_embd for x070).
            decay_lora: Rank of the decay LoRA (x070 w1/w2, x060 time_decay_w1/w2); null = BlinkDL's
                default for n_embd. A loaded .pth's ranks are read from its shapes instead.
            iclr_lora: Rank of x070's in-context learning-rate LoRA (a1/a2); null = BlinkDL's default.
            value_lora: Rank of x070's value-residual LoRA (v1/v2); null = BlinkDL's default.
            gate_lora: Rank of x070's output-gate LoRA (g1/g2); null = BlinkDL's default.
            mix_lora: Rank of x060's token-shift mix LoRA (time_maa_w1/w2); null = BlinkDL's default (32).
            ctx_len: Chunk length of the state carry: samples of any length are cut into chunks of
                ctx_len tokens and the recurrent state flows from chunk to chunk. A multiple of 16.
            bptt_truncate: Detach the state between chunks (no gradient through it). Default: exact BPTT.
            recompute_chunks: Recompute each chunk but the last in the backward pass so that memory stays flat
                in the sample length (only chunk-boundary states are kept).
            load_model: A BlinkDL-format .pth to start from (finetuning); null starts from the official init.
            wkv_backend: WKV implementation: chunked (pure PyTorch, any device, default), reference
                (per-token loop, the oracle), cuda (our CUDA kernels, JIT-built; needs nvcc and
                ninja) or fla (flash-linear-attention's Triton kernels; pip install flash-linear-attention).
            wkv_fallback: The backend to use, with a warning, when wkv_backend cannot run on this
                machine (e.g. chunked); null makes that a one-line error instead.
            lr_init: Peak learning rate (after warmup).
            lr_final: Learning rate at the end of the decay from lr_init (see lr_schedule).
            lr_schedule: cosine (RWKV-v7's, with --my_exit_tokens) or exponential (RWKV-v5's
                geometric decay without it), from lr_init after warmup to lr_final at the last step.
            warmup_steps: Optimizer steps of linear warmup from 1% of lr_init.
            beta1: Adam beta1.
            beta2: Adam beta2.
            adam_eps: Adam epsilon (BlinkDL uses 1e-18); raised to float16's smallest normal (6.1e-5)
                under precision 16-true, where 1e-18 is 0.
            weight_decay: Decoupled weight decay, applied to 2-D weight matrices only.
            l2wrap: Factor of BlinkDL's L2Wrap regulariser on the largest logit (0 disables it).
            export_pth: At the end of fit, write the model as a BlinkDL-format rwkv-final.pth in the log folder.
            plot_loss: At the end of fit, draw the train/validation loss curve as loss.png in the log folder.
            skip_nonfinite_steps: How many updates with a non-finite (nan/inf) loss or gradient norm may
                be skipped in a run; one more stops it with an error naming the step. 0: stop at the first.
            lora: LoRA adapters (Hugging Face peft) on the blocks' Linear layers, {r, alpha, dropout,
                targets, init}; the base weights are frozen. null or r 0 = off.
            train_state: Learn each layer's starting WKV state (state tuning); alone, every weight is
                frozen. With full BPTT the state gets its gradient from the whole sample.
            state_lr: Learning rate of the learned state (same schedule shape); null = lr_init.
                BlinkDL's state tuning uses about 1.
            train_also: With LoRA or state tuning, more tensors to train: ln, emb, head, state, or
                fnmatch globs on BlinkDL names (blocks.11.*, *.att.ln_x.*).
            train_only: Partial finetuning without LoRA: train only what these globs (or ln, emb,
                head, state) name, e.g. ['blocks.1[01].*', 'head.*'] for the last two of 12 layers.
            freeze: Globs (or ln, emb, head, state) of tensors to keep frozen, e.g. ['emb.*'].
            load_adapter: An adapter file (rwkv-final-adapter.pth) to put on top of load_model:
                its LoRA (settings from the file unless model.lora is set), state and tensors.
            export_adapter: Also write rwkv-final-adapter.pth: only the trained tensors (LoRA A/B
                as peft names them, the state as att.time_state, ...), for model.load_adapter.
            export_state: Also write rwkv-final-state.pth: only blocks.N.att.time_state (an
                RWKV-Runner state file).
            val_lambada: A LAMBADA-format jsonl ({"text": ...} lines) scored at each validation,
                tokenised with data.tokenizer: logs val/lambada_acc and val/lambada_ppl (last-word
                accuracy and perplexity, as evaluate.py). Every record runs at every validation
                (split over the devices), so keep the file small (e.g. 500 records); null = off.
        """
        super().__init__()
        self.save_hyperparameters()
        lora = LoraConfig.coerce(lora)  # checkpoints keep it as a dict: they load weights_only
        if ctx_len <= 0 or ctx_len % CTX_LEN_MULTIPLE:
            raise ConfigError(
                f"model.ctx_len={ctx_len} must be a positive multiple of {CTX_LEN_MULTIPLE} "
                f"(the WKV kernels' chunk length), e.g. {max(CTX_LEN_MULTIPLE, ctx_len // CTX_LEN_MULTIPLE * CTX_LEN_MULTIPLE)}"
            )
        wkv_backend = resolve_backend(wkv_backend, wkv_fallback)
        # the architecture fields are this constructor's arguments of the same name (tested)
        cfg = ModelConfig(**{f.name: self.hparams[f.name] for f in fields(ModelConfig)})
        if load_model and Path(load_model).is_file():  # gone on a resume: then the config (or the CLI) says
            file_cfg = pth_config(load_model)  # shapes only: the weights are read in prepare_weights
            check_compatible(cfg, file_cfg, load_model)
            cfg = file_cfg
            # the checkpoints record the file's sizes, so that a resume without the file builds the same model
            self.hparams.update({name: getattr(cfg, name) for name in ARCHITECTURE_SIZES})
        self.model = RWKV(cfg, wkv_backend)
        if not load_model:
            self.model.init_weights()
        self.lora = lora  # the settings in force once prepare_weights ran (an adapter file brings its own)
        self._weights_ready = False
        self._awaiting_restore = False  # prepare_weights left the weights to a checkpoint not yet restored
        # Token counts are positions the model ran (micro-batch x padded length), on all devices.
        self._last_batch_end: float | None = None
        self._tokens_in_batch = 0.0
        self._tokens_seen = 0.0
        self._stop_on_signal: StopOnSignal | None = None
        self._lambada: list[tuple[list[int], list[int]]] = []

    # -- weights -------------------------------------------------------------------------------
    def prepare_weights(self, resuming: bool = False) -> None:
        """Load ``load_model``'s weights into the model built in __init__ (unless ``resuming``: the
        checkpoint about to be restored holds them, and the .pth may be gone), then add LoRA, the
        learned state and ``load_adapter``'s file, and choose what trains. ``setup`` runs it, before
        the optimizer is made and before a strategy shards the parameters; outside a Trainer, call
        it yourself. Runs once."""
        if self._weights_ready:
            return
        hp = self.hparams
        if hp.load_model and not resuming:
            load_state_into(self.model, load_pth(hp.load_model), hp.load_model)
        self.lora = prepare_finetuning(self.model, self.lora, hp.train_state, hp.train_only or [],
                                       hp.train_also or [], hp.freeze or [], hp.load_adapter, restoring=resuming)
        self.hparams["lora"] = asdict(self.lora) if self.lora else None  # plain data, also from an adapter file
        check_exports(self.model, self.lora, hp.export_adapter, hp.export_state)
        rank_zero_info(describe_training(self.model))
        self._weights_ready = True

    def _checkpoint_brings_the_weights(self) -> bool:
        """Is a checkpoint to be restored after setup? ``trainer.ckpt_path`` says so when it is set
        before fit (the CLI sets it); ``trainer.fit(ckpt_path=...)`` names its checkpoint only after
        setup, so there a load_model file that is gone is taken for a resume, checked at the start."""
        if self.trainer.ckpt_path:
            return True
        self._awaiting_restore = bool(self.hparams.load_model) and not Path(self.hparams.load_model).is_file()
        return self._awaiting_restore

    def _check_weights_restored(self) -> None:
        if self._awaiting_restore:  # no checkpoint came: a fresh run whose .pth is missing
            load_pth(self.hparams.load_model)  # raises the one-line "no such file" error

    # -- data checks, then the weights -----------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        vocab = self.model.cfg.vocab_size
        tokenizer_vocab = getattr(dm, "tokenizer_vocab_size", None)
        if tokenizer_vocab is not None and tokenizer_vocab > vocab:
            raise ConfigError(
                f"data.tokenizer={dm.hparams.tokenizer!r} has {tokenizer_vocab} tokens but model.vocab_size={vocab}; "
                "set model.vocab_size to at least the tokenizer's"
            )
        if self.hparams.val_lambada and stage in ("fit", "validate"):
            self._lambada = self._read_val_lambada(dm)
        max_id = getattr(dm, "max_token_id", None)
        if max_id is not None and max_id >= vocab:
            raise DataError(
                f"the data has token id {max_id} but model.vocab_size={self.model.cfg.vocab_size}; "
                "use a tokenizer that matches the model or raise vocab_size"
            )
        if not self._weights_ready:  # (the CLI prepares a fresh run's weights before fit)
            self.prepare_weights(resuming=self._checkpoint_brings_the_weights())

    def _read_val_lambada(self, dm) -> list[tuple[list[int], list[int]]]:
        path = self.hparams.val_lambada
        if not Path(path).is_file():
            raise ConfigError(f"model.val_lambada: no such file {path!r}; give a LAMBADA-format jsonl")
        tokenizer_name = getattr(getattr(dm, "hparams", None), "tokenizer", None)
        if tokenizer_name is None:
            raise ConfigError("model.val_lambada needs the data module's tokenizer (data.tokenizer)")
        examples = read_lambada(path, load_tokenizer(tokenizer_name))
        if max(max(c + t) for c, t in examples) >= self.model.cfg.vocab_size:
            raise DataError(f"model.val_lambada: {path} tokenises to ids beyond "
                            f"model.vocab_size={self.model.cfg.vocab_size}")
        return examples

    # -- steps ---------------------------------------------------------------------------------
    def _loss(self, batch):
        hp = self.hparams
        if self.trainer.world_size > 1 and zero_stage_3(self.trainer.strategy):
            batch = pad_to_longest_across_ranks(batch)
        return chunked_sample_loss(
            self.model, batch["input_ids"], batch["targets"], batch["mask"], hp.ctx_len,
            bptt_truncate=hp.bptt_truncate, recompute=hp.recompute_chunks,
            l2wrap=hp.l2wrap if self.training else 0.0,
            should_stop=self._stop_on_signal.should_stop if self.training and self._stop_on_signal else None,
        )

    def on_train_start(self):
        self._check_weights_restored()
        self._last_batch_end = None
        rank_zero_info(self._step_glossary())

    def _step_glossary(self) -> str:
        """What a step, a micro-batch and a chunk are in this run (the README's glossary, with numbers)."""
        trainer, dm = self.trainer, getattr(self.trainer, "datamodule", None)
        batch_size = getattr(getattr(dm, "hparams", None), "batch_size", None) or "?"
        accumulate, devices = trainer.accumulate_grad_batches, trainer.world_size
        samples = batch_size * accumulate * devices if isinstance(batch_size, int) else "?"
        return (f"one step (optimizer update) = {accumulate} micro-batch(es) x {devices} device(s) x "
                f"{batch_size} sample(s) = {samples} samples; each sample runs as chunks of "
                f"ctx_len={self.hparams.ctx_len} tokens with the state carried (train/chunks), and "
                f"train/step_tokens counts the tokens of one step")

    def on_train_batch_start(self, batch, batch_idx):
        if self._last_batch_end is None:  # first batch, or the first after a validation
            self._last_batch_end = time.perf_counter()

    def training_step(self, batch, batch_idx):
        out = self._loss(batch)
        # One all-reduce gives the loss over every device's tokens and the global token count.
        totals = torch.stack([out.loss_sum.float(), out.n_tokens.float(),
                              torch.tensor(float(batch["input_ids"].numel()), device=self.device)])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        self.log("train/loss", totals[0] / totals[1].clamp(min=1), prog_bar=True)
        self.log("train/chunks", float(out.n_chunks))
        # float() waits for the GPU: tokens/s then measures finished work, not queued work
        self._tokens_in_batch = float(totals[2])
        self._tokens_seen += self._tokens_in_batch  # here: checkpoint callbacks run before on_train_batch_end
        # DeepSpeed's engine.backward divides by the accumulation steps itself, on top of
        # Lightning's division of what this returns.
        divided_twice = self.trainer.strategy.handles_gradient_accumulation
        return loss_for_backward(out.loss, out.n_tokens, totals[1], self.trainer.world_size,
                                 self.trainer.accumulate_grad_batches if divided_twice else 1)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        now = time.perf_counter()
        seconds, self._last_batch_end = max(now - self._last_batch_end, 1e-9), now
        devices = self.trainer.world_size
        self.log("train/tokens_per_s", self._tokens_in_batch / seconds, prog_bar=True)
        self.log("train/tokens_per_s_per_device", self._tokens_in_batch / seconds / devices)
        self.log("train/tokens_seen", self._tokens_seen, prog_bar=True)
        self.log("train/micro_batch_tokens", self._tokens_in_batch)  # one micro-batch, every device
        self.log("train/step_tokens", self._tokens_in_batch * self.trainer.accumulate_grad_batches)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        if self.device.type == "cuda":
            self.log("train/peak_mem_gib", torch.cuda.max_memory_allocated(self.device) / 2**30, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokens_seen"] = self._tokens_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_resumable(checkpoint, self.model.cfg, self.trainer.ckpt_path if self._trainer else "checkpoint")
        self._awaiting_restore = False
        saved_state = (checkpoint.get("state_dict") or {}).get("model.initial_wkv")
        if saved_state is not None and self.model.initial_wkv is None:  # a state that came with the .pth
            self.model.initial_wkv = torch.zeros_like(saved_state)
        self._tokens_seen = checkpoint.get("tokens_seen", 0.0)

    def on_validation_start(self):
        self._check_weights_restored()

    on_test_start = on_validation_start

    def on_validation_epoch_start(self):
        self._last_batch_end = None  # validation time is not training throughput
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_tokens = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch, batch_idx):
        out = self._loss(batch)
        self._val_sum += out.loss_sum.double()
        self._val_tokens += out.n_tokens.double()

    def on_validation_epoch_end(self):
        total = self.all_gather(torch.stack([self._val_sum, self._val_tokens]))
        total = total.reshape(-1, 2).sum(0)
        self.log("val/loss", (total[0] / total[1].clamp(min=1)).float(), prog_bar=True)  # every rank: a monitor may read it
        if self._lambada and not self.trainer.sanity_checking:
            nll_sum, correct, count = self._score_lambada()
            self.log("val/lambada_acc", (correct / count).float())
            self.log("val/lambada_ppl", torch.exp(nll_sum / count).float())

    def _score_lambada(self) -> torch.Tensor:
        """(summed target NLL, accurate examples, examples) over model.val_lambada, the records
        split over the devices. Every device runs the same number of forwards (the last ones
        repeat a record and are not counted): ZeRO-3 gathers the weights in each forward."""
        examples, rank, world = self._lambada, self.global_rank, self.trainer.world_size
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)
        for i in range(rank, -(-len(examples) // world) * world, world):
            logprob, accurate = score_target(self.model, *examples[i % len(examples)], chunk_len=self.hparams.ctx_len)
            if i < len(examples):
                totals += torch.tensor([-logprob, float(accurate), 1.0], device=self.device, dtype=torch.float64)
        return self.trainer.strategy.reduce(totals, reduce_op="sum")

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)

    def on_test_epoch_start(self):
        self.on_validation_epoch_start()

    def on_test_epoch_end(self):
        total = self.all_gather(torch.stack([self._val_sum, self._val_tokens])).reshape(-1, 2).sum(0)
        self.log("test/loss", (total[0] / total[1].clamp(min=1)).float())

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self.model, hp.weight_decay, (hp.state_lr or hp.lr_init) / hp.lr_init)
        for g in groups:
            g["lr"] = hp.lr_init * g["lr_scale"]
        eps = adam_eps_for(str(self.trainer.precision), hp.adam_eps)
        strategy = self.trainer.strategy
        optimizer = make_adam(groups, hp.lr_init, (hp.beta1, hp.beta2), eps, cpu_offload=offloads_optimizer(strategy),
                              fused=can_fuse_adam(self.trainer, (p for g in groups for p in g["params"])))
        steps = self.trainer.estimated_stepping_batches
        if steps == float("inf") or steps < 0:  # a loader without length and no max_steps: the schedule needs an end
            raise ConfigError("the number of training steps is unknown (data.streaming has no length): "
                              "set trainer.max_steps")
        total = max(int(steps), 1)

        def factor(step: int) -> float:
            return lr_at(step, total, hp.lr_init, hp.lr_final, hp.warmup_steps, hp.lr_schedule) / hp.lr_init

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_callbacks(self):
        self._stop_on_signal = StopOnSignal()
        callbacks = safety_callbacks(self.hparams.skip_nonfinite_steps, self._stop_on_signal)
        return callbacks + ([LossCurve()] if self.hparams.plot_loss else [])

    # -- export --------------------------------------------------------------------------------
    def on_train_end(self):
        hp = self.hparams
        if not hp.export_pth:
            return
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective: every rank asks
        with gathered_parameters(self.trainer.strategy, self.model):
            if self.trainer.is_global_zero:
                path = first_unused(folder / "rwkv-final.pth")
                for written in save_exports(self.model, self.lora, path, hp.export_adapter, hp.export_state):
                    rank_zero_info(f"wrote {written}")


def loss_for_backward(loss: torch.Tensor, n_tokens: torch.Tensor, global_tokens: torch.Tensor, world_size: int,
                      extra_division: int = 1) -> torch.Tensor:
    """What one device backpropagates so that the update follows the mean loss over every trained
    token of the global batch, as one device holding the whole batch computes it.

    DDP and ZeRO average the devices' gradients, so each device's mean ``loss`` (over its
    ``n_tokens``) is weighted by its share of the ``global_tokens``; that matters whenever the
    devices' token counts differ (whole documents, packing, masked prompts). ``extra_division``
    undoes a second division by the accumulation steps (DeepSpeed's, on top of Lightning's), so
    gradient clipping and fp16 loss scaling see gradients of their true size.
    """
    return loss * n_tokens * world_size / global_tokens.clamp(min=1) * extra_division
