"""Export a trained checkpoint for deployment and check it against eager on a real clip.

    python scripts/export.py checkpoint=outputs/train/i3d_nl5/<time>/checkpoints/checkpoint_XXX.pt format=onnx
    python scripts/export.py checkpoint=... format=torchscript|exported_program out=model.pt video=clip.mp4

Keys: configs/export.yaml; the job is :func:`nlvideo.export.run` (exit status 1 when the exported
model's logits differ from eager by more than 1e-4 relative).
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


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(run, cfg)


if __name__ == "__main__":
    prepare_argv(REPO / "configs")
    main()
