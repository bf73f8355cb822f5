"""Train a video classifier (C2D/I3D ResNet with non-local blocks).

    python train.py model=i3d_nl5 data=kinetics400 data.root=/data/k400 clip=32x2
    torchrun --nproc_per_node=8 train.py model=i3d_nl5 data=kinetics400 data.root=/data/k400
    python train.py -m model=c2d,c2d_nl5                        # Hydra multirun sweep
    python train.py hydra.run.dir=outputs/my_run ...            # rerun the same line to auto-resume

The training loop reads top to bottom in :mod:`nlvideo.engine.trainer`; docs/training.md is the guide.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

import nlvideo  # noqa: F401  (compat shim: must precede torchvision/pytorchvideo imports)
from nlvideo.engine.cli import prepare_argv, run_job
from nlvideo.engine.trainer import train

KEYS = """
  data.root=DIR               the dataset (data=kinetics400|charades need it; data=synthetic generates)
  data.batch_size=N           clips per process        data.num_workers=N   loader processes
  optim.lr=X                  base rate for optim.reference_batch_size clips (linear scaling)
  trainer.epochs=N | trainer.max_iters=N              trainer.eval_period=N (0: no validation)
  trainer.amp=auto|off|bf16|fp16   trainer.device=auto|cpu|cuda   trainer.compile=true
  trainer.resume=auto|null|PATH  (auto: continue the run dir's newest valid checkpoint)
  trainer.init_weights=PATH   fine-tune from a checkpoint's weights    model.pretrained=PATH|torchvision
  hydra.run.dir=DIR           the run's folder (rerun the same command with it to resume)
"""


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(train, cfg, resumable=True)


if __name__ == "__main__":
    prepare_argv(Path(__file__).resolve().parent / "configs", __doc__, KEYS)
    main()
