"""nlvideo: video classification with non-local neural networks (Wang et al., CVPR 2018)."""

from importlib import import_module
from typing import Any

from nlvideo.compat import patch_torchvision

patch_torchvision()

__version__ = "0.1.0"

# The public API, imported on first use: ``import nlvideo`` (the compat shim that entry scripts and
# loader workers import first) does not pull in the models, the data pipeline and decord with it.
_API = {"create_model": "nlvideo.factory", "list_models": "nlvideo.factory", "Predictor": "nlvideo.predict"}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'nlvideo' has no attribute {name!r}")
    return getattr(import_module(_API[name]), name)
