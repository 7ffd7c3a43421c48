"""RWKV-v7/debug.yaml trains as it did when its loss curve was committed (RWKV-v7/debug-loss.json):
a loss-curve regression test, as torchtitan keeps. Regenerate after an intended change of the
training math with ``python tests/test_debug_recipe.py --update`` (and say why in the commit)."""

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "RWKV-v7" / "debug.yaml"
CURVE = ROOT / "RWKV-v7" / "debug-loss.json"


def debug_run_losses(out: Path) -> list[float]:
    """train/loss of every step of the debug recipe, run in this process into ``out``."""
    sys.path.insert(0, str(ROOT))
    from rwkv_infctx.cli import main

    main(["fit", "-c", str(RECIPE), "--trainer.default_root_dir", str(out)])
    (metrics,) = out.glob("debug/version_*/metrics.csv")
    rows = [r for r in csv.DictReader(open(metrics)) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def test_debug_recipe_reproduces_its_committed_loss_curve(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe names the corpus relative to the repository
    expected = json.loads(CURVE.read_text())["train_loss"]
    losses = debug_run_losses(tmp_path)
    assert len(losses) == len(expected) == 16
    assert losses[-1] < losses[0] - 1.0  # it learns: a sanity check on the committed curve itself
    # float32 on one CPU type; summation order may differ with thread counts: 1e-4 relative
    assert losses == pytest.approx(expected, rel=1e-4), losses


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    import os
    import tempfile

    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as folder:
        losses = debug_run_losses(Path(folder))
    CURVE.write_text(json.dumps({"recipe": "RWKV-v7/debug.yaml", "device": "cpu, float32",
                                 "train_loss": losses}, indent=1) + "\n")
    print(f"wrote {CURVE}: {losses}")
