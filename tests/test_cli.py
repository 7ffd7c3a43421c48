"""The command line: fit/validate through LightningCLI, shipped configs, one-line errors."""

import glob
import json

import pytest
import torch
import yaml

from rwkv_infctx.checkpoint import config_from_state_dict
from rwkv_infctx.cli import main

from .helpers import ROOT, TINY_CLI, run_script

TINY = [*TINY_CLI, "--data.batch_size", "2"]


@pytest.mark.slow
def test_fit_then_validate_in_subprocesses(tmp_path):
    out = tmp_path / "out"
    fit = run_script("lightning_trainer.py", "fit", "-c", "config-example.yaml", *TINY,
                     "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
                     "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
                     "--trainer.callbacks.init_args.every_n_train_steps", "2")
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpts = glob.glob(str(out / "**" / "*.ckpt"), recursive=True)
    assert ckpts, "no Lightning checkpoint written"
    pth = glob.glob(str(out / "**" / "rwkv-final.pth"), recursive=True)
    assert len(pth) == 1
    cfg = config_from_state_dict(torch.load(pth[0], weights_only=True))
    assert (cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size) == ("x070", 1, 32, 65536)

    other = tmp_path / "other.txt"
    other.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    val = run_script("lightning_trainer.py", "validate", "-c", "config-example.yaml", *TINY,
                     "--ckpt_path", ckpts[0], "--data.source", str(other), "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(out),
                     "--trainer.limit_val_batches", "null")
    assert val.returncode == 0, val.stderr[-3000:]
    assert "val/loss" in val.stdout
    row = next(line for line in val.stdout.splitlines() if "val/loss" in line)
    loss = float(row.replace("│", " ").replace("|", " ").split()[-1])
    assert 0 < loss < 12


def test_wrong_config_key_is_one_line_error_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layr: 3\n")
    proc = run_script("lightning_trainer.py", "fit", "-c", "config-example.yaml", "-c", str(bad))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "n_layr" in lines[0], proc.stderr


@pytest.mark.parametrize("config", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("**/*.yaml")
                                          if "out" not in p.parts and ".github" not in p.parts))
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(ROOT / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    shipped = yaml.safe_load((ROOT / config).read_text())
    for section in ("model", "data"):  # every value the file sets is the value the run gets
        for key, value in (shipped.get(section) or {}).items():
            got = printed[section][key]
            if isinstance(value, dict):  # a typed group (model.lora): its defaults fill the rest
                got = {k: got[k] for k in value}
            assert got == value, (section, key)


def test_help_documents_every_setting(capsys):
    """--help reads the docstrings: each setting is explained where the user looks for it."""
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, words in {"model.ctx_len": "Chunk length of the state carry",
                       "model.skip_nonfinite_steps": "non-finite",
                       "model.lr_schedule": "exponential",
                       "data.magic_prime": "BlinkDL's sampling",
                       "data.sources": "Several sources in one run"}.items():
        assert f"--{key} " in text, key
        assert words in text, (key, words)


def one_line_error(args, capsys, tmp_path) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(ROOT / "config-example.yaml"), *TINY, "--trainer.max_steps", "1",
              "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    return err[0]


def test_ctx_len_not_a_multiple_of_16(capsys, tmp_path):
    assert "model.ctx_len=40 must be a positive multiple of 16" in one_line_error(["--model.ctx_len", "40"], capsys, tmp_path)


def test_missing_data_file(capsys, tmp_path):
    assert "no file matches" in one_line_error(["--data.source", str(tmp_path / "nope.jsonl")], capsys, tmp_path)


def test_empty_dataset(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    assert "gave no samples" in one_line_error(["--data.source", str(empty)], capsys, tmp_path)


def test_tokenizer_larger_than_vocab_size(capsys, tmp_path):
    message = one_line_error(["--model.vocab_size", "1000"], capsys, tmp_path)
    assert "has 65536 tokens but model.vocab_size=1000" in message


def test_token_id_beyond_vocab_size(capsys, tmp_path):
    from rwkv_infctx.data.binidx import write_binidx
    write_binidx(tmp_path / "ids", [list(range(1, 300)), [5, 6, 7, 0]])
    message = one_line_error(["--model.vocab_size", "256", "--data.source", str(tmp_path / "ids")], capsys, tmp_path)
    assert "token id 299" in message and "model.vocab_size=256" in message


def test_missing_load_model_file(capsys, tmp_path):
    assert "no such file" in one_line_error(["--model.load_model", str(tmp_path / "x.pth")], capsys, tmp_path)


def test_unknown_format_value(capsys, tmp_path):
    message = one_line_error(["--data.format", "xml"], capsys, tmp_path)
    assert "data.format" in message and "xml" in message


def test_load_model_of_another_version(capsys, tmp_path):
    from rwkv_infctx.scripts.init_model import main as init_main
    pth = tmp_path / "v6.pth"
    init_main(["--version", "x060", "--n_layer", "1", "--n_embd", "32", "--head_size", "16", str(pth)])
    message = one_line_error(["--model.load_model", str(pth)], capsys, tmp_path)
    assert "has version=x060 but the config says model.version=x070" in message


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")


@NO_GPU
@pytest.mark.parametrize("backend", ["cuda", "fla"])
def test_gpu_backend_on_a_cpu_is_one_line_error_or_the_chosen_fallback(backend, capsys, tmp_path):
    message = one_line_error(["--model.wkv_backend", backend], capsys, tmp_path)
    assert f"model.wkv_backend={backend} cannot run here" in message and "chunked" in message
    from rwkv_infctx.training.module import RWKVModule
    with pytest.warns(UserWarning, match="using chunked instead"):
        module = RWKVModule(n_layer=1, n_embd=32, head_size=16, vocab_size=64, wkv_backend=backend,
                            wkv_fallback="chunked")
    assert module.model.blocks[0].att.wkv_backend == "chunked"


@NO_GPU
def test_deepspeed_on_a_cpu_is_one_line_error(capsys, tmp_path):
    message = one_line_error(["--trainer.strategy", "deepspeed_stage_2"], capsys, tmp_path)
    assert "DeepSpeed runs on CUDA GPUs only" in message


@NO_GPU
def test_deepspeed_validate_on_a_cpu_is_one_line_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-c", str(ROOT / "config-example.yaml"), *TINY, "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.strategy", "deepspeed_stage_3"])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "DeepSpeed runs on CUDA GPUs only" in err[0]


def test_deepspeed_not_installed_is_one_line_error(capsys, tmp_path, monkeypatch):
    import lightning.pytorch.strategies.deepspeed as lightning_deepspeed

    monkeypatch.setattr(lightning_deepspeed, "_DEEPSPEED_AVAILABLE", False)
    assert "you must have DeepSpeed installed" in one_line_error(
        ["--trainer.strategy", "deepspeed_stage_2"], capsys, tmp_path)


def test_readme_deepspeed_strategy_block_parses(capsys):
    """The DeepSpeedStrategy block with its own settings that README.md shows, as a user pastes it."""
    import re

    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"`strategy: (\{class_path: lightning\.pytorch\.strategies\.DeepSpeedStrategy.*?\}\})`",
                          readme.replace("\n", " "))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(ROOT / "config-example.yaml"), "--trainer.strategy", block, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "DeepSpeedStrategy" in printed and "allgather_bucket_size: 200000000" in printed
