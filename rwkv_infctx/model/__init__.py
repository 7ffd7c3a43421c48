from .rwkv import RWKV, VERSIONS
from .state import RecurrentState

__all__ = ["RWKV", "RecurrentState", "VERSIONS"]
