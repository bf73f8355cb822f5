"""The torchvision compat shim: the trap it works around is real here, and the shim defuses it."""

import subprocess
import sys

import torch

from nlvideo.compat import patch_torchvision, torchvision_extension_loads


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_plain_import_fails_exactly_when_the_extension_cannot_load():
    result = run_python("import torchvision")
    if torchvision_extension_loads():  # a matching (e.g. GPU) install: nothing to work around
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert "operator torchvision::nms does not exist" in result.stderr


def test_shim_makes_torchvision_and_pytorchvideo_usable():
    code = (
        "import nlvideo.compat  # the package's __init__ applies the shim\n"
        "declared = nlvideo.compat._library is not None\n"
        "import torch, torchvision.transforms.v2.functional as F\n"
        "from torchvision.models import resnet50\n"
        "from pytorchvideo.transforms import ShortSideScale\n"
        "x = torch.zeros(3, 4, 20, 30)\n"
        "print(declared, tuple(ShortSideScale(10)(x).shape), tuple(F.center_crop(x, [8, 8]).shape))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    declared = "False" if torchvision_extension_loads() else "True"
    assert result.stdout.split() == [declared, "(3,", "4,", "10,", "15)", "(3,", "4,", "8,", "8)"]


def test_shim_is_idempotent_and_leaves_detection_ops_unavailable_only_when_declared():
    assert patch_torchvision() is False  # already applied by `import nlvideo`
    assert hasattr(torch.ops.torchvision, "nms")
