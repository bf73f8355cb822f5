"""Multi-view test of a trained checkpoint: per-video averaged scores, metrics.json, predictions.csv.

    python eval.py checkpoint=outputs/train/i3d_nl5/<time>/checkpoints/checkpoint_000400000.pt
    python eval.py checkpoint=... data.root=/other/copy/of/k400 data.test.num_clips=10   # (data keys)
    torchrun --nproc_per_node=8 eval.py checkpoint=...

The run's configuration is rebuilt from the checkpoint: the command-line overrides the training run
was started with (stored in the checkpoint) are composed again, and the ones given here are applied
on top. So the model, clip length and dataset match training unless you override them.

Outputs (in this run's Hydra dir, ``outputs/eval/<model>/<time>``, ``<model>`` the model the checkpoint
was trained as): ``metrics.json`` (top-1/top-5 or mAP in percent, #videos, #skipped videos, the
checkpoint and a run id), ``predictions.csv`` (per video: label, top-5 classes and scores),
``scores.pt`` (per-video mean scores, for ensembling), the per-class report, ``config_resolved.yaml``:
published together at the end, ``metrics.json`` last, so a killed run never leaves two evaluations'
files side by side. The job itself is :mod:`nlvideo.engine.tester`.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

import nlvideo  # noqa: F401  (compat shim: must precede torchvision/pytorchvideo imports)
from nlvideo.engine.cli import prepare_argv, run_job
from nlvideo.engine.tester import evaluate

KEYS = """
  checkpoint=PATH             required: the training checkpoint to test
  data.root=DIR               another copy of the dataset     data.test.num_clips=N  temporal views
  data.batch_size=N           clips per process               trainer.device=auto|cpu|cuda
"""


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(evaluate, cfg)


if __name__ == "__main__":
    prepare_argv(Path(__file__).resolve().parent / "configs", __doc__, KEYS)
    main()
