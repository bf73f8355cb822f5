"""The testing job (``eval.py`` is its Hydra entry point): multi-view test of a trained checkpoint.

    evaluate            checkpoint -> config recomposed from its overrides -> test split -> scores
      weights_to_test     a train.py checkpoint, or published weights (model.pretrained=, no checkpoint=)
      evaluation_config   the training run's overrides, then this command's; the model and input
                          normalisation the checkpoint was trained with
      write_outputs       metrics.json, predictions.csv, scores.pt, the per-class report
                          (engine/report.py), config_resolved.yaml (rank 0)
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from nlvideo.data.annotations import output_order
from nlvideo.engine import checkpoint as ckpt_io
from nlvideo.engine import distributed as du
from nlvideo.engine.bad_videos import BadVideoReport
from nlvideo.engine.config import ConfigError, validate_config
from nlvideo.engine.evaluate import (
    VideoScoreAggregator,
    evaluate_dataset,
    one_evaluation,
    write_json,
    write_predictions,
)
from nlvideo.engine.logging import setup_rank_logging
from nlvideo.engine.report import REPORT_FILES, write_report
from nlvideo.engine.runtime import (
    build_model,
    build_split,
    make_forward,
    run_dir_of_this_job,
    setup_runtime,
    task_overrides,
)
from nlvideo.models import apply_pretrained_to_config
from nlvideo.models.pretrained import load_weights, weights_of

log = logging.getLogger("nlvideo.eval")


def evaluation_config(state: dict) -> DictConfig:
    """The training run's overrides, then this command's (minus ``checkpoint=``), composed afresh; then
    the model options and ``data.mean``/``std`` the checkpoint recorded (what it was trained with, also
    when a pretrained file set them), except where this command sets them."""
    trained = [o for o in state.get("overrides", []) if not o.startswith("checkpoint=")]
    mine = [o for o in task_overrides() if not o.startswith("checkpoint=")]
    cfg = compose(config_name="config", overrides=trained + mine)
    saved = state.get("config") or {}
    if saved.get("model"):
        _restore(cfg.model, saved["model"], "model", mine)
        cfg.model.pretrained = None  # the checkpoint's weights replace whatever it started from
    for key in ("mean", "std"):
        if key in saved.get("data", {}) and not _overridden(f"data.{key}", mine):
            cfg.data[key] = saved["data"][key]
    if "model" not in saved:  # published weights: their options and normalisation
        apply_pretrained_to_config(cfg, trained + mine)
    return cfg


def _restore(node: DictConfig, saved: dict, prefix: str, overrides: list[str]) -> None:
    for key, value in saved.items():
        if key not in node or _overridden(f"{prefix}.{key}", overrides):
            continue
        if isinstance(value, dict) and isinstance(node[key], DictConfig):
            _restore(node[key], value, f"{prefix}.{key}", overrides)
        else:
            node[key] = value


def _overridden(key: str, overrides: list[str]) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] in (key, *_parents(key)) for o in overrides)


def _parents(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def weights_to_test(cfg: DictConfig) -> tuple[dict, Path]:
    """A train.py checkpoint (``checkpoint=``), or published weights (``model.pretrained=`` alone: the
    model builder loads them), as (checkpoint dict, path)."""
    if cfg.checkpoint is not None:
        path = Path(str(cfg.checkpoint))
        return load_checkpoint_for_testing(path), path
    if cfg.model.get("pretrained"):
        return {"overrides": []}, Path(str(cfg.model.pretrained))
    raise ConfigError("checkpoint is required: eval.py checkpoint=/path/to/checkpoint_XXXXXXXXX.pt "
                      "(or model.pretrained=FILE to test published weights)")


def evaluate(cfg: DictConfig) -> int:
    """Test ``cfg.checkpoint`` (or published weights) on the test split; returns the exit status."""
    info = du.init_distributed(float(cfg.trainer.dist_timeout_min), str(cfg.trainer.device))
    setup_rank_logging(info.rank)
    state, path = weights_to_test(cfg)
    cfg = evaluation_config(state)
    validate_config(cfg, needs_train=False)
    run_dir = run_dir_of_this_job()
    device = setup_runtime(cfg, info.rank)

    net = build_model(cfg, device)
    if "model" in state:  # every tensor from the checkpoint, or one line naming what does not fit
        load_weights(net, weights_of(state, str(path), "checkpoint"), complete=True)
    # Whole videos: each decoded once for all its views.
    ds, _, loader = build_split(cfg, "test", False, int(cfg.data.batch_size), whole_videos=True)
    order = outputs_for_data_classes(state.get("class_names"), ds.class_names, path)
    log.info("testing %s (%s, iteration %d) on %d videos x %d views", path, cfg.model.name,
             state.get("iteration", -1), ds.num_videos, ds.num_views)
    agg = evaluate_dataset(net, loader, ds, make_forward(cfg, device), cfg.trainer, desc="test",
                           output_order=order)
    bad_videos = BadVideoReport()
    bad_videos.update(bad_videos.new(agg.failures.items()), "its views are not scored")
    if agg.counts.count_nonzero() == 0:  # every rank has the reduced counts: all of them stop
        raise ConfigError(f"no test video could be read: all {ds.num_videos} listed videos are unreadable "
                          "(each is named in the log); nothing was scored")
    if info.is_main:
        write_outputs(run_dir, cfg, ds, agg, path, state)
    return 0


def load_checkpoint_for_testing(path: Path) -> dict:
    """The checkpoint at ``path``, or one :class:`ConfigError` line saying why it cannot be tested
    (absent, cut short or damaged, needing full unpickling, no model weights) instead of a traceback."""
    if not path.is_file():
        raise ConfigError(f"checkpoint={path} does not exist")
    state = ckpt_io.load_checkpoint(path, f"checkpoint={path}")
    if not isinstance(state, dict) or "model" not in state:
        raise ConfigError(f"checkpoint={path} holds no model weights (no 'model' key): "
                          "pass a checkpoint_XXXXXXXXX.pt written by train.py")
    return state


def outputs_for_data_classes(model_classes: list[str] | None, data_classes: list[str],
                             path: Path) -> list[int] | None:
    """For each test-data class, the model output that scores it (None: output i is class i): mapped by
    name when the data orders the checkpoint's classes differently, refused in one line when the
    classes differ (a model scores only what it was trained on)."""
    try:
        order = output_order(model_classes, data_classes)
    except ValueError as exc:
        raise ConfigError(f"checkpoint={path} does not fit the test data: {exc}") from None
    if order is not None:
        log.info("the test data lists the checkpoint's %d classes in another order: outputs mapped to the "
                 "test data's classes by name", len(order))
    return order


RESULT_FILES = ("metrics.json", "predictions.csv", "scores.pt", *REPORT_FILES, "config_resolved.yaml")


def write_outputs(run_dir: Path, cfg: DictConfig, ds, agg: VideoScoreAggregator, path: Path,
                  state: dict) -> None:
    """metrics.json (with the test loss and the views actually scored), predictions.csv, scores.pt
    (per-video mean scores, for ensembling), the per-class report and the config: the files of one
    evaluation (:func:`~nlvideo.engine.evaluate.one_evaluation`, metrics.json last), which
    metrics.json and scores.pt name by the checkpoint tested and a run id of their own."""
    present, scores, labels = agg.result()
    multi_label = bool(ds.multi_label)
    run_id = uuid.uuid4().hex[:12]
    metrics = agg.metrics()
    metrics.update({"num_videos": int(len(present)), "skipped_videos": agg.num_failed,
                    "num_views": int(ds.num_views), "num_views_scored": agg.num_views_scored,
                    "checkpoint": str(path.resolve()), "run_id": run_id,
                    "iteration": int(state.get("iteration", -1)), "model": str(cfg.model.name)})
    ids = [_video_id(ds, int(i)) for i in present]
    with one_evaluation(run_dir, run_id, RESULT_FILES) as stage:
        write_predictions(stage / "predictions.csv", ids, scores, labels, list(ds.class_names), multi_label)
        torch.save({"video": ids, "scores": scores, "labels": labels, "class_names": list(ds.class_names),
                    "checkpoint": metrics["checkpoint"], "run_id": run_id}, stage / "scores.pt")
        write_report(stage, scores, labels, list(ds.class_names), multi_label)
        (stage / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        write_json(stage / "metrics.json", metrics)
    log.info("test: %s  (%d videos, %d skipped) -> %s", "  ".join(
        f"{k} {metrics[k]:.2f}" for k in ("top1", "top5", "mAP", "loss") if k in metrics),
        len(present), agg.num_failed, run_dir / "metrics.json")


def _video_id(ds, index: int) -> str:
    """A readable id for video ``index`` if the dataset offers one, else the index."""
    records = getattr(ds, "records", None)
    if records is not None and hasattr(records[index], "path"):
        return str(records[index].path)
    return str(index)
