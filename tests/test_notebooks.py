"""notebook/: every notebook is valid and parameterised, and each runs end to end on CPU, tiny.

Each run goes through papermill as a user's would (from notebook/, as Jupyter starts it), with its
work and model folders in tmp_path so that the repository stays clean.
"""

import ast
from pathlib import Path

import pytest

from rwkv_infctx.checkpoint import config_from_state_dict, detect_version, load_pth

from .helpers import ROOT

NOTEBOOK_DIR = ROOT / "notebook"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# what the tests, README and every notebook rely on
SHARED_PARAMETERS = {"n_layer", "n_embd", "ctx_len", "accelerator", "precision", "work_dir", "model_dir",
                     "model_name", "export_dtype", "repo_root"}
TINY = {"n_layer": 2, "n_embd": 64, "ctx_len": 32, "accelerator": "cpu"}


def parameters_cell(nb):
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", "one code cell tagged 'parameters'"
    return tagged[0]


def test_the_three_notebooks_are_there():
    names = {path.name for path in NOTEBOOKS}
    assert {"rwkv7-from-scratch.ipynb", "rwkv7-finetune-instruct.ipynb", "rwkv7-infinite-context.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_valid_clean_and_parameterised(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "commit notebooks without outputs"
    for cell in code:
        compile(cell.source, f"{path.name}:{cell.id}", "exec")
    params = parameters_cell(nb)
    names = {target.id for node in ast.parse(params.source).body if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)}
    assert SHARED_PARAMETERS <= names, SHARED_PARAMETERS - names
    papermill = pytest.importorskip("papermill")
    # papermill must see every parameter (it cannot parse a line whose comment holds '=')
    assert set(papermill.inspect_notebook(str(path))) == names


def execute(name: str, tmp_path: Path, **parameters) -> tuple[Path, str]:
    """Runs notebook/<name> with papermill; returns the one .pth it left in model_dir, and its text output."""
    papermill = pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    out = tmp_path / name
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / name), str(out), cwd=str(NOTEBOOK_DIR), progress_bar=False, execution_timeout=300,
        parameters={**TINY, "work_dir": str(tmp_path / "work"), "model_dir": str(tmp_path / "model"), **parameters})
    import nbformat
    text = "".join(output.get("text", "") for cell in nbformat.read(out, as_version=4).cells
                   for output in cell.get("outputs", []))
    models = sorted((tmp_path / "model").glob("*.pth"))
    assert len(models) == 1, models
    return models[0], text


def assert_tiny_x070(path: Path) -> None:
    sd = load_pth(path)
    assert detect_version(sd) == "x070"
    cfg = config_from_state_dict(sd)
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size) == (2, 64, 65536)


@pytest.mark.slow
def test_from_scratch_notebook_runs(tmp_path):
    pth, text = execute("rwkv7-from-scratch.ipynb", tmp_path, sample_len=64, batch_size=2, max_steps=3,
                        val_every=3, val_batches=1, dragon_length=8)
    assert pth.name == "rwkv7-L2-D64-from-scratch.pth"
    assert_tiny_x070(pth)
    assert "train/loss" in text and "[8 tokens in" in text


@pytest.mark.slow
def test_finetune_instruct_notebook_runs(tmp_path):
    pth, text = execute("rwkv7-finetune-instruct.ipynb", tmp_path, batch_size=2, max_steps=3, val_every=3,
                        val_batches=1, reply_length=8)
    assert pth.name == "rwkv7-L2-D64-instruct.pth"
    assert_tiny_x070(pth)
    # the loss mask shown: the question is context, the answer a target
    assert "User: What does the Python documentation say about" in text and "Assistant:[[ " in text
    assert "tokens are loss targets" in text and "[8 tokens in" in text


@pytest.mark.slow
def test_infinite_context_notebook_runs(tmp_path):
    pth, text = execute("rwkv7-infinite-context.ipynb", tmp_path, chunks=[2], no_recompute_chunks=[2],
                        steps=1, dragon_length=8)
    assert pth.name == "rwkv7-L2-D64-infctx-64.pth"
    assert_tiny_x070(pth)
    table = [row for row in map(str.split, text.splitlines()) if len(row) == 6 and row[2] in ("true", "false")]
    assert [(row[0], row[2]) for row in table] == [("2", "true"), ("2", "false")]
    assert all(float(row[3]) > 0 for row in table)  # a peak resident memory for every run
