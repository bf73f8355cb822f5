"""torch.hub entry points, one per model config (``nlvideo.list_models()``), from a local clone:

    model = torch.hub.load("/path/to/nlvideo", "i3d_nl5", source="local", num_classes=400)
    model = torch.hub.load("/path/to/nlvideo", "c2d_nl5", source="local", num_classes=4, width=8)

Keyword arguments are :func:`nlvideo.create_model`'s: ``num_classes``, ``pretrained`` and model keys.
"""

from collections.abc import Callable

from nlvideo.factory import create_model as _create_model
from nlvideo.factory import list_models as _list_models
from nlvideo.models import VideoResNet as _VideoResNet

dependencies = ["torch", "omegaconf"]


def _entry_point(name: str) -> Callable[..., _VideoResNet]:
    def entry_point(**kwargs) -> _VideoResNet:
        return _create_model(name, **kwargs)

    entry_point.__name__ = name
    entry_point.__doc__ = f"nlvideo.create_model({name!r}, **kwargs): the model of configs/model/{name}.yaml."
    return entry_point


globals().update({name: _entry_point(name) for name in _list_models()})
