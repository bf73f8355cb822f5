"""Export a trained checkpoint for deployment and check it against eager on a real clip.

    python scripts/export.py checkpoint=outputs/train/i3d_nl5/<time>/checkpoints/checkpoint_XXX.pt format=onnx
    python scripts/export.py checkpoint=... format=torchscript|exported_program out=model.pt video=clip.mp4

The file is written under a temporary name and renamed to ``out`` once its logits match eager (within
1e-4 relative; else exit status 1 and ``out`` is left as it was). The job is :func:`nlvideo.export.run`.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nlvideo  # noqa: E402,F401  (compat shim: must precede torchvision/pytorchvideo imports)
from nlvideo.engine.cli import prepare_argv, run_job  # noqa: E402
from nlvideo.export import run  # noqa: E402

KEYS = """
  checkpoint=PATH             a train.py checkpoint (required)
  format=onnx|torchscript|exported_program                 video=FILE   the clip to check on
  out=FILE                    default: the checkpoint's path with .onnx / .torchscript.pt / .pt2
  dynamic=true|false          frame count and crop dynamic too (onnx, exported_program)
"""


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(run, cfg)


if __name__ == "__main__":
    prepare_argv(REPO / "configs", __doc__, KEYS, groups=())  # configs/export.yaml takes no group
    main()
