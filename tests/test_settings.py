"""Each setting is defined once: the architecture fields are RWKVModule's arguments, every argument
is annotated in config-example.yaml, and the version list has one source."""

import inspect
from dataclasses import MISSING, fields

import pytest
import yaml

from rwkv_infctx.config import SUPPORTED_VERSIONS, VERSION_DEFAULTS, ModelConfig
from rwkv_infctx.data.datamodule import RWKVDataModule
from rwkv_infctx.data.formats import FormatConfig
from rwkv_infctx.model import VERSIONS
from rwkv_infctx.training.module import RWKVModule

from .helpers import ROOT



def parameters(cls) -> dict:
    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}


def test_every_architecture_field_is_a_model_argument_with_the_same_default():
    module_args = parameters(RWKVModule)
    for f in fields(ModelConfig):
        assert f.name in module_args, f"model.{f.name} cannot be set from a config"
        assert module_args[f.name] == (f.default if f.default is not MISSING else f.default_factory()), f.name


def test_every_format_field_is_a_data_argument_with_the_same_default():
    data_args = parameters(RWKVDataModule)
    for f in fields(FormatConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        assert f.name in data_args and (data_args[f.name] or type(default)()) == default, f.name


@pytest.mark.parametrize("section, cls", [("model", RWKVModule), ("data", RWKVDataModule)])
def test_config_example_annotates_every_setting(section, cls):
    example = yaml.safe_load((ROOT / "config-example.yaml").read_text())[section]
    missing = set(parameters(cls)) - set(example)
    assert not missing, f"config-example.yaml lacks {section}: {sorted(missing)}"


def test_one_list_of_versions():
    assert set(SUPPORTED_VERSIONS) == set(VERSIONS) == set(VERSION_DEFAULTS)
    assert inspect.signature(RWKVModule.__init__).parameters["version"].annotation in ("Version", "Literal")
    from rwkv_infctx.scripts.init_model import build_parser

    (version_action,) = [a for a in build_parser()._actions if a.dest == "version"]
    assert tuple(version_action.choices) == SUPPORTED_VERSIONS


def test_lora_ranks_of_a_fresh_model_follow_the_config():
    module = RWKVModule(version="x070", n_layer=2, n_embd=64, head_size=16, vocab_size=97, decay_lora=48,
                        iclr_lora=40, value_lora=24, gate_lora=56)
    att = module.model.blocks[1].att
    assert (att.w1.shape[1], att.a1.shape[1], att.v1.shape[1], att.g1.shape[1]) == (48, 40, 24, 56)
    v6 = RWKVModule(version="x060", n_layer=1, n_embd=64, head_size=16, vocab_size=97, mix_lora=8, decay_lora=16)
    assert v6.model.blocks[0].att.time_maa_w2.shape[1] == 8 and v6.model.blocks[0].att.time_decay_w1.shape[1] == 16
