"""Long runs are safe: a NaN stops the run and never reaches a file, SIGTERM/SIGUSR1 save a
resumable checkpoint, every file appears atomically, resume takes the command line's settings."""

import csv
import errno
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from rwkv_infctx.checkpoint import load_pth, save_pth
from rwkv_infctx.cli import main
from rwkv_infctx.errors import CheckpointError, TrainingStopped, WriteError
from rwkv_infctx.files import atomic_write, remove_stale_temporaries
from rwkv_infctx.training.optim import lr_at
from rwkv_infctx.training.safety import AtomicCheckpointIO, adam_eps_for

from .helpers import logged_steps, random_model, tiny_config, tiny_fit
from .test_cli import ROOT, TINY, one_line_error, run_script
from .test_resume import small_corpus


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- 1. non-finite loss or gradient ------------------------------------------------------------
class PoisonLoss(L.Callback):
    """Makes the loss of the given optimizer steps NaN, as a diverged model would."""

    def __init__(self, steps):
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.checkpoint_io = trainer.strategy.checkpoint_io
        if trainer.global_step + 1 in self.steps:
            batch["mask"][:] = float("nan")


def test_nonfinite_loss_stops_the_run_naming_the_step_and_keeps_the_last_finite_checkpoint(tmp_path):
    source = small_corpus(tmp_path)
    poison = PoisonLoss({3})
    with pytest.raises(TrainingStopped, match=r"^step 3: train/loss is nan; training stopped.*ckpt.*skip_nonfinite_steps"):
        tiny_fit(tmp_path, source, max_steps=6, callbacks=[poison], checkpoint_every=1)
    assert type(poison.checkpoint_io) is AtomicCheckpointIO  # Lightning's checkpoints go through our writer
    kept = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert kept == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"]
    weights = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in weights.values())
    rows = csv.DictReader(open(tmp_path / "log" / "version_0" / "metrics.csv"))  # the logs so far are kept
    assert [int(r["step"]) for r in rows if r.get("train/loss")][:2] == [0, 1]


class RecordWeights(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, *args):
        self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_skip_nonfinite_steps_skips_that_many_updates(tmp_path):
    record = RecordWeights()
    with pytest.warns(UserWarning, match=r"step 2: train/loss is nan; update skipped \(1 of model.skip_nonfinite_steps=1\)"), \
            pytest.raises(TrainingStopped, match=r"^step 3: train/loss is nan"):
        tiny_fit(tmp_path, small_corpus(tmp_path), max_steps=4, callbacks=[PoisonLoss({2, 3}), record],
                 module_args={"skip_nonfinite_steps": 1})
    assert all(torch.isfinite(t).all() for t in record.weights.values())


def test_nonfinite_weights_are_never_written_nor_loaded(tmp_path):
    model = random_model(tiny_config())
    save_pth(model, tmp_path / "good.pth")
    with torch.no_grad():
        model.blocks[1].att.receptance.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="'blocks.1.att.receptance.weight'"):
        save_pth(model, tmp_path / "good.pth", overwrite=True)
    assert load_pth(tmp_path / "good.pth")  # untouched
    torch.save(model.state_dict(), tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan.pth: holds non-finite values \(nan/inf\) in 'blocks.1.att.receptance.weight'"):
        load_pth(tmp_path / "nan.pth")
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match="not writing .*last.ckpt.*'w'"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, math.nan])}}, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["w"].tolist() == [1.0, 1.0]


def test_adam_eps_fits_float16():
    assert torch.tensor(1e-18, dtype=torch.float16) == 0  # why: BlinkDL's eps vanishes in fp16
    eps = adam_eps_for("16-true", 1e-18)
    assert torch.tensor(eps, dtype=torch.float16) == torch.finfo(torch.float16).tiny
    assert adam_eps_for("16-true", 1e-3) == 1e-3
    assert adam_eps_for("bf16-true", 1e-18) == adam_eps_for("16-mixed", 1e-18) == 1e-18


def test_float16_training_stays_finite(tmp_path):
    trainer = tiny_fit(tmp_path, small_corpus(tmp_path), max_steps=2, precision="16-true")
    assert all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters())
    assert trainer.optimizers[0].param_groups[0]["eps"] == torch.finfo(torch.float16).tiny


def flat(rows: list[tuple]) -> list[float]:
    """(step, loss, lr) rows as one list: pytest.approx compares flat sequences only."""
    return [value for row in rows for value in row]


# -- 2. SIGTERM / SIGUSR1 ----------------------------------------------------------------------
class SendSignal(L.Callback):
    """Sends ``signum`` to this process once ``step`` optimizer steps are done: before the next
    step's chunks run ("chunk": the step is abandoned at its second chunk) or right after it."""

    def __init__(self, signum, step, moment):
        self.signum, self.step, self.moment = signum, step, moment

    def on_train_batch_start(self, trainer, *args):
        if self.moment == "chunk" and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, *args):
        if self.moment == "step_end" and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    source = small_corpus(root)
    return source, logged_steps(tiny_fit(root, source, max_steps=4))


@pytest.mark.parametrize("signum,moment", [(signal.SIGTERM, "chunk"), (signal.SIGUSR1, "step_end")])
def test_signal_saves_a_checkpoint_that_resumes_the_same_run(tmp_path, capfd, uninterrupted, signum, moment):
    source, whole = uninterrupted
    with pytest.raises(SystemExit) as stop:
        tiny_fit(tmp_path, source, max_steps=4, callbacks=[SendSignal(signum, 1, moment)], checkpoint_every=10)
    assert stop.value.code == 128 + signum
    ckpt = tmp_path / "ckpt" / "interrupted-step=1.ckpt"
    name = signal.Signals(signum).name
    assert capfd.readouterr().err.splitlines()[-1] == (
        f"stopped by {name} after step 1: saved {ckpt}; resume with the same command and --ckpt_path {ckpt}")
    rest = logged_steps(tiny_fit(tmp_path, source, max_steps=4, ckpt_path=ckpt))
    assert [r[0] for r in rest] == [1, 2, 3]
    assert flat(rest) == pytest.approx(flat(whole[1:]), rel=1e-6)  # loss and lr of the uninterrupted run
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL and leftovers(ckpt.parent) == []


def test_sigterm_between_micro_batches_saves_the_whole_step(tmp_path):
    """Under gradient accumulation a signal after a step's first micro-batch lets the step finish:
    the checkpoint is of a completed step and resuming gives the uninterrupted run's losses."""
    source = small_corpus(tmp_path)

    class SignalAfterFirstMicroBatch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 2:  # the first of step 1's two micro-batches
                os.kill(os.getpid(), signal.SIGTERM)

    whole = logged_steps(tiny_fit(tmp_path / "whole", source, max_steps=3, accumulate_grad_batches=2))
    with pytest.raises(SystemExit) as stop:
        tiny_fit(tmp_path, source, max_steps=3, callbacks=[SignalAfterFirstMicroBatch()], accumulate_grad_batches=2)
    assert stop.value.code == 128 + signal.SIGTERM
    ckpt = tmp_path / "log" / "version_0" / "checkpoints" / "interrupted-step=2.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    rest = logged_steps(tiny_fit(tmp_path, source, max_steps=3, ckpt_path=ckpt, accumulate_grad_batches=2))
    assert flat(rest) == pytest.approx(flat(whole[2:]), rel=1e-6)


@pytest.mark.slow
def test_sigterm_during_a_sample_of_many_chunks_stops_within_seconds(tmp_path):
    """A real process, 200-chunk samples: SIGTERM is acted on at the next chunk, and the
    checkpoint is of step 0 (without the check between chunks, step 1 would end first)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "lightning_trainer.py", "fit", "-c", "config-example.yaml", *TINY,
                             "--data.sample_len", "6400", "--trainer.max_steps", "50", "--trainer.logger", "false",
                             "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
                             "--trainer.callbacks", "null", "--model.recompute_chunks", "false"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # Lightning logs the step glossary at the start of training
        if "one step (optimizer update)" in line:
            break
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert time.monotonic() - sent < 10, "SIGTERM waited for the sample to end"
    assert proc.returncode == 128 + signal.SIGTERM, rest[-2000:]
    ckpt = out / "checkpoints" / "interrupted-step=0.ckpt"
    assert rest.strip().splitlines()[-1] == (
        f"stopped by SIGTERM after step 0: saved {ckpt}; resume with the same command and --ckpt_path {ckpt}")
    assert torch.load(ckpt, weights_only=True)["global_step"] == 0


# -- 3. atomic writes --------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_on_errors_and_disk_full(tmp_path, monkeypatch):
    target = tmp_path / "model.pth"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError), atomic_write(target) as tmp:
        tmp.write_text("half")
        1 / 0
    assert target.read_text() == "old" and leftovers(tmp_path) == []

    def disk_full(obj, path):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(WriteError, match=r"model.pth: could not be written \(.*disk full.*previous file"):
        save_pth(random_model(), target, overwrite=True)
    with pytest.raises(WriteError, match="last.ckpt: could not be written"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    monkeypatch.setattr(Path, "write_text", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(WriteError, match="no space left on device"), atomic_write(tmp_path / "x") as tmp:
        tmp.write_text("x")
    assert target.read_text() == "old" and leftovers(tmp_path) == [] and not (tmp_path / "last.ckpt").exists()


KILLED_WRITER = """
import sys, torch
from rwkv_infctx.training.safety import AtomicCheckpointIO
io, n = AtomicCheckpointIO(), 0
while True:
    n += 1
    io.save_checkpoint({"state_dict": {"w": torch.full((4_000_000,), float(n))}, "n": n}, sys.argv[1])
    print(n, flush=True)
"""


def test_kill_9_while_writing_last_ckpt_leaves_a_whole_checkpoint(tmp_path):
    """Lightning's own writer stages the file in the system's temporary folder and copies it over
    last.ckpt (a kill mid-copy truncates it when that folder is another file system): ours writes
    nothing outside the checkpoint's folder, and renames."""
    last, system_tmp = tmp_path / "ckpt" / "last.ckpt", tmp_path / "system-tmp"
    system_tmp.mkdir()
    for delay in (0.4,):  # more delays catch more moments, at 10 s each on a busy machine
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(last)], cwd=ROOT, stdout=subprocess.PIPE,
                                env={**os.environ, "TMPDIR": str(system_tmp)})
        proc.stdout.readline()  # one checkpoint is complete
        time.sleep(delay)
        proc.kill()
        proc.wait()
        checkpoint = torch.load(last, weights_only=True)
        assert (checkpoint["state_dict"]["w"] == checkpoint["n"]).all()
    assert [p.name for p in system_tmp.iterdir() if p.is_file()] == []  # (torch may put a cache folder there)
    (last.parent / "notes.tmp").write_text("not ours")
    remove_stale_temporaries(last.parent)  # as the next run does in its checkpoint folder
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "notes.tmp"]


# -- 4. resume takes the command line's settings -------------------------------------------------
class RecordLr(L.Callback):
    def on_train_batch_start(self, trainer, *args):
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_resume_trains_at_the_new_lr_and_refuses_a_new_architecture(tmp_path, capsys):
    source = small_corpus(tmp_path)
    tiny_fit(tmp_path, source, max_steps=2, checkpoint_every=2)
    last = tmp_path / "ckpt" / "last.ckpt"
    used = RecordLr()
    resumed = tiny_fit(tmp_path, source, max_steps=3, ckpt_path=last, callbacks=[used],
                       module_args={"lr_init": 0.05, "lr_final": 0.02, "beta1": 0.8})
    assert used.lr == pytest.approx(lr_at(2, 3, 0.05, 0.02, 2), rel=1e-6)  # the lr of the resumed update
    # metrics.csv's lr of step s is the one set for the next step (Lightning steps the schedule first)
    assert [row[2] for row in logged_steps(resumed)] == pytest.approx([lr_at(3, 3, 0.05, 0.02, 2)], rel=1e-6)
    assert resumed.optimizers[0].param_groups[0]["betas"] == (0.8, 0.99)
    with pytest.raises(CheckpointError, match=r"last.ckpt: has n_layer=1 but the config says model.n_layer=2$"):
        tiny_fit(tmp_path, source, max_steps=5, ckpt_path=last, module_args={"n_layer": 2})
    # the command line too (LightningCLI would put the checkpoint's n_layer over it)
    assert one_line_error(["--ckpt_path", str(last), "--model.n_layer", "2"], capsys, tmp_path) == (
        f"error: {last}: has n_layer=1 but the config says model.n_layer=2")


# -- 5 and 11: the run's folder ----------------------------------------------------------------
@pytest.mark.slow
def test_default_root_dir_holds_every_output_of_the_run(tmp_path):
    out = tmp_path / "run"
    proc = run_script("lightning_trainer.py", "fit", "-c", "config-example.yaml", *TINY, "--trainer.max_steps", "2",
                      "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2",
                      "--trainer.callbacks.init_args.every_n_train_steps", "2", "--trainer.default_root_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "rwkv7-prose" / "version_0"
    assert {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()} == {
        "config.yaml", "hparams.yaml", "metrics.csv", "loss.png", "rwkv-final.pth",
        "checkpoints/epoch=0-step=2.ckpt", "checkpoints/last.ckpt"}


def test_a_run_failing_in_setup_leaves_no_version_folder(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(ROOT / "config-example.yaml"), *TINY, "--model.vocab_size", "100",
              "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger.init_args.save_dir", ""])
    assert exit_info.value.code == 2
    assert "set model.vocab_size to at least the tokenizer's" in capsys.readouterr().err
    assert not (tmp_path / "run" / "rwkv7-prose").exists()


# -- 9/10: one-line errors ---------------------------------------------------------------------
def test_ckpt_path_errors_are_one_line(capsys, tmp_path):
    assert one_line_error(["--ckpt_path", str(tmp_path / "no.ckpt")], capsys, tmp_path) == \
        f"error: ckpt_path: no such file {str(tmp_path / 'no.ckpt')!r}"
    save_pth(random_model(tiny_config(n_layer=1, n_embd=32)), tmp_path / "model.pth")
    assert one_line_error(["--ckpt_path", str(tmp_path / "model.pth")], capsys, tmp_path) == (
        f"error: ckpt_path: {tmp_path / 'model.pth'} is not a Lightning training checkpoint; "
        "it is a .pth model: start from it with --model.load_model")
    (tmp_path / "corrupt.ckpt").write_bytes(b"PK\x03\x04" + b"x" * 100)
    assert one_line_error(["--ckpt_path", str(tmp_path / "corrupt.ckpt")], capsys, tmp_path).startswith(
        f"error: ckpt_path: {tmp_path / 'corrupt.ckpt'} is not a readable Lightning checkpoint (")


def test_empty_config_file_is_named(capsys, tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert one_line_error(["-c", str(tmp_path / "empty.yaml")], capsys, tmp_path) == (
        f"error: {tmp_path / 'empty.yaml'}: the config file is empty; give model:, data: and trainer: keys "
        "(see config-example.yaml)")


def test_unknown_command_line_key_prints_what_the_readme_shows(capsys, tmp_path):
    line = one_line_error(["--model.n_layr", "3"], capsys, tmp_path)
    assert line == "error: unrecognized arguments: --model.n_layr 3"
    assert "| `error: unrecognized arguments: --model.X ...` |" in (ROOT / "README.md").read_text()


def test_legacy_pth_loads(tmp_path):
    model = random_model()
    torch.save(model.state_dict(), tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    sd = load_pth(tmp_path / "old.pth")
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_dragon_test_names_its_own_argument_and_refuses_a_nan_model(tmp_path, capsys):
    from rwkv_infctx.scripts.dragon_test import main as dragon

    model = random_model()
    with torch.no_grad():
        model.emb.weight[3, 3] = float("nan")
    torch.save(model.state_dict(), tmp_path / "nan.pth")
    for path, expected in [(tmp_path / "none.pth", f"error: dragon_test.py model: no such file {str(tmp_path / 'none.pth')!r}"),
                           (tmp_path / "nan.pth", f"error: {tmp_path / 'nan.pth'}: holds non-finite values (nan/inf) in 'emb.weight'")]:
        with pytest.raises(SystemExit) as exit_info:
            dragon([str(path), "--length", "2"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected)


# -- 6 and 9: export_checkpoint.py ----------------------------------------------------------------
class WritesAMarker:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def export_error(args, capsys) -> str:
    from rwkv_infctx.scripts.export_checkpoint import main as export_main

    with pytest.raises(SystemExit) as exit_info:
        export_main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_export_of_a_crafted_deepspeed_folder_runs_no_code(tmp_path, capsys):
    pytest.importorskip("deepspeed")
    folder, marker = tmp_path / "ds", tmp_path / "code-ran"
    (folder / "global_step1").mkdir(parents=True)
    (folder / "latest").write_text("global_step1")
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({"optimizer_state_dict": WritesAMarker(marker), "module": {}}, folder / "global_step1" / name)
    line = export_error([folder, tmp_path / "out.pth"], capsys)
    assert line.startswith(f"error: {folder}: not exported: a file holds ") and "could run code" in line
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_export_folder_errors_are_one_line(tmp_path, capsys):
    ckpt = tmp_path / "model.pth"
    save_pth(random_model(), ckpt)
    (tmp_path / "outdir").mkdir()
    assert export_error([ckpt, tmp_path / "outdir", "--overwrite"], capsys) == (
        f"error: {tmp_path / 'outdir'} is a folder; give the .pth file to write, e.g. {tmp_path / 'outdir' / 'rwkv.pth'}")
    assert export_error([tmp_path / "outdir", tmp_path / "x.pth"], capsys).startswith(
        f"error: {tmp_path / 'outdir'} is a folder but not a DeepSpeed checkpoint")
