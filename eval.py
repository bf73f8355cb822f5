"""Multi-view test of a trained checkpoint: per-video averaged scores, metrics.json, predictions.csv.

    python eval.py checkpoint=outputs/train/i3d_nl5/<time>/checkpoints/checkpoint_000400000.pt
    python eval.py checkpoint=... data.root=/other/copy/of/k400 data.test.num_clips=10   # (data keys)
    torchrun --nproc_per_node=8 eval.py checkpoint=...

The run's configuration is rebuilt from the checkpoint: the command-line overrides the training run
was started with (stored in the checkpoint) are composed again, and the ones given here are applied
on top. So the model, clip length and dataset match training unless you override them.

Outputs (in this run's Hydra dir, ``outputs/eval/<model>/<time>``): ``metrics.json`` (top-1/top-5 or
mAP in percent, #videos, #skipped videos), ``predictions.csv`` (per video: label, top-5 classes and
scores), ``scores.pt`` (per-video mean scores, for ensembling), ``config_resolved.yaml``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf

import nlvideo  # noqa: F401  (compat shim: must precede torchvision/pytorchvideo imports)
from nlvideo.engine import checkpoint as ckpt_io
from nlvideo.engine import distributed as du
from nlvideo.engine.bad_videos import BadVideoReport
from nlvideo.engine.config import ConfigError, validate_config
from nlvideo.engine.evaluate import compute_metrics, run_evaluation, write_json, write_predictions
from nlvideo.engine.logging import Progress, setup_rank_logging
from train import (
    _ticking,
    build_model,
    build_split,
    exit_on_bad_group_choice,
    make_forward,
    nonzero_rank_argv,
    run_dir_of_this_job,
    run_job,
    setup_runtime,
    task_overrides,
)

log = logging.getLogger("nlvideo.eval")


def evaluation_config(cfg: DictConfig, state: dict) -> DictConfig:
    """The training run's overrides, then this command's (minus ``checkpoint=``), composed afresh."""
    trained = [o for o in state.get("overrides", []) if not o.startswith("checkpoint=")]
    mine = [o for o in task_overrides() if not o.startswith("checkpoint=")]
    return compose(config_name="config", overrides=trained + mine)


def evaluate(cfg: DictConfig) -> int:
    if cfg.checkpoint is None:
        raise ConfigError("checkpoint is required: eval.py checkpoint=/path/to/checkpoint_XXXXXXXXX.pt")
    info = du.init_distributed()
    setup_rank_logging(info.rank)
    path = Path(str(cfg.checkpoint))
    if not path.is_file():
        raise ConfigError(f"checkpoint={path} does not exist")
    state = ckpt_io.load_checkpoint(path)
    cfg = evaluation_config(cfg, state)
    validate_config(cfg, needs_train=False)
    run_dir = run_dir_of_this_job()
    device = setup_runtime(cfg, info.rank)

    ds, _, loader = build_split(cfg, "test", False, int(cfg.data.batch_size))
    net = build_model(cfg, device)
    net.load_state_dict(state["model"])
    forward = make_forward(cfg, device)
    log.info("testing %s (%s, iteration %d) on %d videos x %d views", path, cfg.model.name,
             state.get("iteration", -1), ds.num_videos, ds.num_views)

    progress = Progress(loader, total=len(loader), desc="test", mode=cfg.trainer.progress,
                        log_period=int(cfg.trainer.log_period))
    agg = run_evaluation(net, loader, ds.num_videos, ds.num_classes, bool(ds.multi_label), forward,
                         progress=lambda it: _ticking(it, progress))
    progress.close()
    bad_videos = BadVideoReport()
    bad_videos.update(bad_videos.new(agg.failures.items()), "its views are not scored")
    present, scores, labels = agg.result()
    metrics = compute_metrics(scores, labels, bool(ds.multi_label))
    metrics.update({"num_videos": int(len(present)), "skipped_videos": agg.num_failed,
                    "num_views": int(ds.num_views), "checkpoint": str(path.resolve()),
                    "iteration": int(state.get("iteration", -1)), "model": str(cfg.model.name)})
    if info.is_main:
        ids = [_video_id(ds, int(i)) for i in present]
        write_json(run_dir / "metrics.json", metrics)
        write_predictions(run_dir / "predictions.csv", ids, scores, labels, list(ds.class_names),
                          bool(ds.multi_label))
        torch.save({"video": ids, "scores": scores, "labels": labels, "class_names": list(ds.class_names)},
                   run_dir / "scores.pt")
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log.info("test: %s  (%d videos, %d skipped) -> %s", "  ".join(
            f"{k} {metrics[k]:.2f}" for k in ("top1", "top5", "mAP") if k in metrics),
            len(present), agg.num_failed, run_dir / "metrics.json")
    return 0


def _video_id(ds, index: int) -> str:
    """A readable id for video ``index`` if the dataset offers one, else the index."""
    records = getattr(ds, "records", None)
    if records is not None and hasattr(records[index], "path"):
        return str(records[index].path)
    return str(index)


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(evaluate, cfg)


if __name__ == "__main__":
    sys.argv = nonzero_rank_argv(sys.argv)
    exit_on_bad_group_choice(sys.argv[1:])
    main()
