"""nlvideo.create_model / list_models and torch.hub: models by name from configs/model/*.yaml."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import nlvideo
from nlvideo.factory import model_config
from nlvideo.models import ConfigError, VideoResNet

REPO = Path(__file__).resolve().parents[1]


def test_list_models_is_the_model_config_group():
    names = nlvideo.list_models()
    assert names == sorted(p.stem for p in (REPO / "configs" / "model").glob("*.yaml"))
    assert {"c2d", "c2d_nl5", "i3d_nl5", "i3d_nl10", "i3d_r101_nl5"} <= set(names)


@pytest.mark.parametrize("name", nlvideo.list_models())
def test_model_config_is_what_train_py_composes(name):
    """One source of truth: the factory's config of every model is Hydra's ``model=NAME``."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}", "data.num_classes=7"])
    assert model_config(name, 7) == OmegaConf.to_container(cfg.model, resolve=True)


def test_create_model_applies_overrides_key_by_key():
    model = nlvideo.create_model("i3d_nl5", 4, width=8, nonlocal_={"instantiation": "dot_product"})
    assert model.spec.name == "i3d_nl5" and model.spec.arch == "i3d" and model.spec.width == 8
    assert dict(model.spec.nonlocal_.positions) == {"res3": (1, 3), "res4": (1, 3, 5)}  # kept from the yaml
    assert {block.instantiation for _, block in model.nonlocal_blocks()} == {"dot_product"}
    assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 4)


def test_unknown_names_and_keys_are_config_errors_naming_them():
    with pytest.raises(ConfigError, match=r"unknown model 'i3d_nl7'; choose one of: .*i3d_nl5"):
        nlvideo.create_model("i3d_nl7")
    with pytest.raises(ConfigError, match="widht"):
        nlvideo.create_model("c2d", widht=8)


@pytest.mark.parametrize("name", ["c2d_nl5", "i3d_nl10"])
def test_torch_hub_loads_models_from_a_local_clone(name):
    model = torch.hub.load(str(REPO), name, source="local", num_classes=3, width=8)
    assert isinstance(model, VideoResNet) and model.spec.name == name and model.head.fc.out_features == 3
