"""Models: the non-local block and the C2D/I3D ResNets it is inserted into."""

from nlvideo.models.build import build_video_resnet, to_channels_last_3d
from nlvideo.models.nonlocal_block import INSTANTIATIONS, NonLocalBlock
from nlvideo.models.pretrained import apply_pretrained_to_config, inflate_state_dict
from nlvideo.models.resnet import NONLOCAL_PREFIX, VideoResNet, is_nonlocal_name, nonlocal_name
from nlvideo.models.spec import ConfigError, ModelSpec, NonLocalSpec, make_spec

__all__ = [
    "INSTANTIATIONS",
    "NONLOCAL_PREFIX",
    "ConfigError",
    "ModelSpec",
    "NonLocalBlock",
    "NonLocalSpec",
    "VideoResNet",
    "apply_pretrained_to_config",
    "build_video_resnet",
    "inflate_state_dict",
    "is_nonlocal_name",
    "make_spec",
    "nonlocal_name",
    "to_channels_last_3d",
]
