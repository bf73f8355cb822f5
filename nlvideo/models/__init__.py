"""Models: the non-local block and the C2D/I3D ResNets it is inserted into."""

from nlvideo.models.build import build_video_resnet, to_channels_last_3d
from nlvideo.models.inflate import inflate_state_dict
from nlvideo.models.nonlocal_block import INSTANTIATIONS, NonLocalBlock
from nlvideo.models.resnet import VideoResNet
from nlvideo.models.spec import ConfigError, ModelSpec, NonLocalSpec, make_spec

__all__ = [
    "INSTANTIATIONS",
    "ConfigError",
    "ModelSpec",
    "NonLocalBlock",
    "NonLocalSpec",
    "VideoResNet",
    "build_video_resnet",
    "inflate_state_dict",
    "make_spec",
    "to_channels_last_3d",
]
