"""nlvideo: video classification with non-local neural networks (Wang et al., CVPR 2018)."""

from nlvideo.compat import patch_torchvision

patch_torchvision()

__version__ = "0.1.0"
