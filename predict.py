"""Label videos with a trained checkpoint or published weights: top-k classes by name, eval.py's
multi-view test.

    python predict.py checkpoint=outputs/train/i3d_nl5/<time>/checkpoints/checkpoint_XXX.pt video=clip.mp4
    python predict.py checkpoint=... video=videos/ views=1 output=json > predictions.json
    python predict.py checkpoint=... video=[a.mp4,b.mp4] topk=3 device=cpu
    python predict.py model=i3d_nl5 model.pretrained=I3D_NLN_8x8_R50.pkl classes=classids.json video=clip.mp4

Keys (configs/predict.yaml): ``views=paper`` (10 clips x 3 crops) | ``1`` | ``<clips>x<crops>``,
``topk``, ``output=text|json``, ``device``, ``batch_size``; for published weights ``model=``,
``model.pretrained=``, ``classes=`` (a class file), ``data=`` (kinetics400) and ``clip=`` (8x8).
Unreadable videos are skipped with their reason; the exit status is 1 when none could be read. The
job is :func:`nlvideo.predict.run`.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

import nlvideo  # noqa: F401  (compat shim: must precede torchvision/pytorchvideo imports)
from nlvideo.engine.cli import prepare_argv, run_job
from nlvideo.predict import run

KEYS = """
  checkpoint=PATH             a train.py checkpoint (model, classes, views come from it)
  video=FILE|DIR|[a.mp4,b.mp4]  what to label        views=paper|1|<clips>x<crops>   topk=N
  output=text|json            device=auto|cpu|cuda    batch_size=N (views per forward pass)
  model=NAME model.pretrained=FILE classes=FILE       published weights instead of checkpoint=
"""


@hydra.main(config_path="configs", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(run, cfg)


if __name__ == "__main__":
    prepare_argv(Path(__file__).resolve().parent / "configs", __doc__, KEYS, groups=("model", "data", "clip"))
    main()
