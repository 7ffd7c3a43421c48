import pytest
import torch

from .wkv_kernels import emulated, kernel  # noqa: F401  (fixtures: the WKV kernels under test)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
