"""``pip install .`` must carry everything the package reads at run time: the CUDA kernel sources
(the cuda backend JIT-builds them), the embedded corpus and the NeoX tokenizer."""

import shutil
import subprocess
import sys
import zipfile

from .helpers import ROOT



def test_wheel_ships_kernel_sources_and_data(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "rwkv_infctx", src / "rwkv_infctx", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", src)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    kernel_sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rwkv_infctx/ops/csrc").rglob("*") if p.is_file()}
    assert {"rwkv_infctx/ops/csrc/wkv7.cu", "rwkv_infctx/ops/csrc/wkv_bindings.cpp"} <= kernel_sources
    assert kernel_sources <= names, sorted(kernel_sources - names)
    assert "rwkv_infctx/data/corpus/english_prose.jsonl" in names
    assert "rwkv_infctx/data/tokenizers/20B_tokenizer.json" in names
