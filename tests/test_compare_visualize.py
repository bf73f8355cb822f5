"""Run comparison and attention visualisation: real tiny training runs, and run directories made like
train.py makes them (a composed ``config_resolved.yaml``, events written by the trainer's TensorBoard
class) for the grouping matrix, which would take minutes to train."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

import nlvideo.data.config  # noqa: F401  (the resolvers of the data configs)
from nlvideo.compare import compare, find_event_dirs, load_run, main
from nlvideo.data import build_dataset
from nlvideo.engine.logging import TensorBoard
from nlvideo.models import build_video_resnet
from nlvideo.visualize import block_attention, load_clip, render
from tests.test_train_run import REPO, app_env


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=app_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compare_writes_curves_png_and_table_with_both_runs(two_runs, tmp_path):
    result = run_module("nlvideo.compare", *map(str, two_runs.values()), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    image = Image.open(tmp_path / "curves.png")
    image.verify()
    assert image.size[0] >= 800 and image.size[1] >= 300
    assert (tmp_path / "curves.png").stat().st_size > 20_000  # two panels with curves, not a blank canvas
    rows = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| c2d")]
    assert [row.split("|")[1].strip() for row in rows] == ["c2d", "c2d_nl1"]
    assert [row.split("|")[2].strip() for row in rows] == ["0", "1"]
    assert all(row.split("|")[4].strip() == "4" for row in rows)  # last iteration: 2 epochs x 2
    assert result.stdout.count("| c2d") == 2


def test_runs_are_read_with_their_curves_and_hparams(two_runs):
    run = load_run(find_event_dirs([two_runs["c2d_nl1"]])[0])
    assert run.model == "c2d_nl1" and run.hparams["num_nonlocal"] == 1
    steps, values = run.series("train/top1")
    assert steps.tolist() == [1, 2, 3, 4] and ((values >= 0) & (values <= 100)).all()
    assert run.series("val/top1")[0].tolist() == [2, 4]


def test_runs_of_different_lengths_and_in_progress_runs_are_compared(two_runs, tmp_path):
    """A run whose event file stops early (as one still training) is plotted up to where it is."""
    from torch.utils.tensorboard import SummaryWriter

    partial = tmp_path / "partial" / "tb"
    writer = SummaryWriter(str(partial))
    writer.add_scalar("train/top1", 20.0, 1)
    writer.flush()  # not closed: like a live run
    png, md, _, _ = compare([*two_runs.values(), partial.parent], tmp_path / "out")
    assert png.is_file() and "| partial | ? | 1 | 1 |" in md.read_text()
    writer.close()


def test_a_run_without_config_file_is_grouped_by_its_checkpoints_config(two_runs, tmp_path):
    """A run directory copied without config_resolved.yaml: the newest checkpoint's config stands in,
    so it is known as the same experiment and seed as the run it copies: listed apart, not averaged."""
    copy = tmp_path / "copy"
    shutil.copytree(two_runs["c2d"], copy)
    (copy / "config_resolved.yaml").unlink()
    assert load_run(copy / "tb").settings == load_run(two_runs["c2d"] / "tb").settings
    _, md, groups, warnings = compare([two_runs["c2d"], copy, two_runs["c2d_nl1"]], tmp_path / "out")
    assert {label: len(runs) for label, runs in groups.items()} == {"c2d": 1, "c2d · copy": 1, "c2d_nl1": 1}
    assert len(warnings) == 1 and "has the same config and seed (0) as a run of 'c2d'" in warnings[0]


def configured_run_dir(run_dir: Path, *overrides: str):
    """``run_dir`` with the ``config_resolved.yaml`` train.py writes for these overrides; the config."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    run_dir.mkdir(parents=True)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return cfg


def fake_run(root: Path, name: str, *overrides: str, params_m: float = 0.5, final: float = 40.0,
             steps: tuple[int, ...] = (10, 20, 30)) -> Path:
    """A run directory as train.py writes it: the composed, resolved config and TensorBoard events (the
    trainer's hparams, train/val curves) of a validation at each of ``steps``; ``final`` is the last
    validation metric."""
    run_dir = root / name
    cfg = configured_run_dir(run_dir, *overrides)
    tb = TensorBoard(str(run_dir / "tb"))
    num_nl = len(cfg.model["nonlocal"].positions)
    tb.hparams({"model": cfg.model.name, "num_nonlocal": num_nl, "params_M": params_m, "gflops": 2 * params_m,
                "global_batch": int(cfg.data.batch_size)}, ["val/top1"])
    metric = "val/mAP" if cfg.data.multi_label else "val/top1"
    for i, step in enumerate(steps):
        value = final - 10 * (len(steps) - 1 - i)
        tb.scalars({"train/top1": value + 5, "train/clips_per_s": 50.0, metric: value}, step)
    tb.close()
    return run_dir


def run_compare(capsys, *args: str) -> subprocess.CompletedProcess:
    """``python -m nlvideo.compare ARGS`` in this process (a subprocess re-imports torch: seconds)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def table_rows(md: Path) -> dict[str, list[str]]:
    rows = [line.split("|")[1:-1] for line in md.read_text().splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_runs_are_grouped_by_the_configuration_that_differs_and_seeds_average(tmp_path, capsys):
    """The issue's case: i3d_nl5 runs differing in width, crop, clip, instantiation, lr were averaged
    into one curve with one run's parameters and another's FLOPs. Only the seed (and settings that
    change no result: data.root, threads) may average."""
    base = ["model=i3d_nl5", "model.width=8"]
    runs = [
        fake_run(tmp_path, "seed0", *base, "seed=0", final=40.0),
        fake_run(tmp_path, "seed1", *base, "seed=1", "data.root=/elsewhere", "trainer.cpu_threads=1",
                 final=50.0),
        fake_run(tmp_path, "dot", *base, "model.nonlocal.instantiation=dot_product", params_m=0.54),
        fake_run(tmp_path, "wide", "model=i3d_nl5", params_m=35.4),
        fake_run(tmp_path, "crop", *base, "data.train_crop_size=56"),
        fake_run(tmp_path, "clip", *base, "clip=32x2"),
        fake_run(tmp_path, "lr", *base, "optim.lr=0.02"),
        fake_run(tmp_path, "nl0", "model=i3d", "model.width=8", params_m=0.44),
        fake_run(tmp_path, "nl10", "model=i3d_nl10", "model.width=8", params_m=0.67),
    ]
    result = run_compare(capsys, *map(str, runs), "--out", str(tmp_path / "out"), "--tensorboard")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    rows = table_rows(tmp_path / "out" / "table.md")
    assert list(rows) == ["i3d_nl5 · width=8", "i3d_nl5 · width=8 · dot_product", "i3d_nl5 · width=64",
                          "i3d_nl5 · width=8 · train_crop_size=56", "i3d_nl5 · width=8 · 32x2",
                          "i3d_nl5 · width=8 · lr=0.02", "i3d · width=8", "i3d_nl10 · width=8"]
    # columns: #NL, runs, last iteration, final, best, final train err, params (M), GFLOPs, clips/s
    seeds = rows["i3d_nl5 · width=8"]
    assert seeds[:4] == ["5", "2", "30", "45.0 ± 7.1"]
    assert rows["i3d_nl5 · width=64"][1] == "1"
    params = {label: row[6] for label, row in rows.items()}  # each group's own runs
    assert params["i3d_nl5 · width=64"] == "35.40" and params["i3d_nl5 · width=8 · dot_product"] == "0.54"
    assert params["i3d · width=8"] == "0.44" and rows["i3d · width=8"][7] == "0.88"
    assert params["i3d_nl5 · width=8"] == "0.50"
    assert "i3d_nl5 · width=8: " + ", ".join(str(tmp_path / n) for n in ("seed0", "seed1")) in result.stdout
    links = sorted(p.name for p in (tmp_path / "out" / "tensorboard").iterdir())
    assert "i3d_nl5 · width=8 · seed 0" in links and "i3d_nl5 · width=64" in links and len(links) == 9


def test_same_config_and_seed_is_listed_apart_and_short_or_running_runs_are_flagged(tmp_path, capsys):
    """An aborted 6-iteration run with the same seed as a finished one was averaged into
    'c2d_nl5 (5 NL, 2 seeds)' without a warning; a run still training looked finished."""
    finished = fake_run(tmp_path, "finished", "model=c2d_nl5", "seed=0", final=50.0)
    aborted = fake_run(tmp_path, "aborted", "model=c2d_nl5", "seed=0", final=10.0, steps=(6,))
    fake_run(tmp_path, "seed1", "model=c2d_nl5", "seed=1", final=40.0)
    live = fake_run(tmp_path, "live", "model=c2d", "seed=0")
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'host h pid 7 since t\\n'); print(1, flush=True); "
            "time.sleep(60)")  # another process holds the run dir's lock, as a training run does
    holder = subprocess.Popen([sys.executable, "-c", hold, str(live / ".nlvideo.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"
        result = run_compare(capsys, str(tmp_path), "--out", str(tmp_path / "out"))
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr
    rows = table_rows(tmp_path / "out" / "table.md")
    assert list(rows) == ["c2d_nl5", "c2d_nl5 · aborted", "c2d"]
    # columns: #NL, runs, last iteration, final, best, final train err, params, GFLOPs, clips/s, notes
    assert rows["c2d_nl5"][1:4] == ["2", "30", "45.0 ± 7.1"] and rows["c2d_nl5"][-1] == ""
    assert rows["c2d_nl5 · aborted"][1:4] == ["1", "6", "10.0"]
    assert rows["c2d_nl5 · aborted"][-1] == "stopped at iteration 6 of 30"
    assert rows["c2d"][-1] == "still running (host h pid 7 since t)"
    assert (f"compare: WARNING: {aborted} has the same config and seed (0) as a run of 'c2d_nl5': one "
            "experiment run twice, not two seeds; listed apart as 'c2d_nl5 · aborted'") in result.stderr
    assert f"c2d_nl5: {finished}, {tmp_path / 'seed1'}" in result.stdout
    table = (tmp_path / "out" / "table.md").read_text()
    assert "¹ clips/s is each run's median training throughput, measured on whatever machine" in table
    # the figure's legend carries the same flags
    from nlvideo.compare import group_runs, legend

    groups, _ = group_runs([load_run(d) for d in find_event_dirs([tmp_path / "finished", aborted])])
    assert legend("c2d_nl5 · aborted", groups["c2d_nl5 · aborted"]).endswith("⚠ stopped at iteration 6 of 30")


def test_runs_differing_only_in_sync_period_and_tf32_are_seeds_of_one_experiment(tmp_path, capsys):
    runs = [fake_run(tmp_path, "a", "model=c2d", "seed=0", "trainer.sync_period=1"),
            fake_run(tmp_path, "b", "model=c2d", "seed=1", "trainer.sync_period=8", "trainer.tf32=false")]
    result = run_compare(capsys, *map(str, runs), "--out", str(tmp_path / "out"))
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    assert list(table_rows(tmp_path / "out" / "table.md")) == ["c2d"]


def test_a_broken_config_or_an_out_file_is_one_line(tmp_path, capsys):
    """A config_resolved.yaml cut mid-way gave a 60-line YAML traceback; --out naming a file one from
    mkdir."""
    run = fake_run(tmp_path, "run", "model=c2d")
    config = run / "config_resolved.yaml"
    config.write_text(config.read_text()[:200] + "\n  bad: [unclosed\n")
    result = run_compare(capsys, str(run), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: compare: {config} is not valid YAML (")
    out_file = tmp_path / "table.md"
    out_file.write_text("x")
    config.write_text("model: {name: c2d}\n")
    result = run_compare(capsys, str(run), "--out", str(out_file))
    assert result.returncode == 2 and result.stderr == (
        f"error: compare: --out {out_file} is a file: pass a directory (curves.png and table.md are written "
        "into it)\n")


def test_runs_on_different_datasets_are_kept_apart_with_a_loud_warning(tmp_path, capsys):
    runs = [fake_run(tmp_path, "synthetic", "model=i3d_nl5", "seed=0"),
            fake_run(tmp_path, "kinetics", "model=i3d_nl5", "data=kinetics400", "data.root=/data/k400")]
    result = run_compare(capsys, *map(str, runs), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "compare: WARNING: runs on different datasets: synthetic (1 run(s): synthetic); kinetics400" in (
        result.stderr)
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.startswith("> **Warning**: runs on different datasets")
    assert list(table_rows(tmp_path / "out" / "table.md")) == ["i3d_nl5 · synthetic", "i3d_nl5 · kinetics400"]


def test_runs_with_different_metrics_are_refused(tmp_path, capsys):
    """A Charades-style mAP run and a top-1 run must never share a curve or an axis."""
    top1 = fake_run(tmp_path, "top1", "model=c2d_nl5")
    mean_ap = fake_run(tmp_path, "map", "model=c2d_nl5", "data=synthetic_charades")
    result = run_compare(capsys, str(top1), str(mean_ap), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(rf"report different validation metrics .*top-1: {top1}; mAP: {mean_ap}\. Compare them "
                     "separately", result.stderr), result.stderr
    assert not (tmp_path / "out").exists()


def test_group_by_and_label_override_the_grouping_and_say_what_they_average(tmp_path, capsys):
    narrow = fake_run(tmp_path / "sweep", "narrow", "model=c2d_nl5", "model.width=8", final=30.0)
    wide = fake_run(tmp_path / "sweep", "wide", "model=c2d_nl5", final=50.0)
    base = fake_run(tmp_path, "baseline", "model=c2d", "model.width=8")
    result = run_compare(capsys, str(tmp_path / "sweep"), str(base), "--group-by", "model.name",
                        "--out", str(tmp_path / "by_model"))
    assert result.returncode == 0, result.stderr
    rows = table_rows(tmp_path / "by_model" / "table.md")
    assert list(rows) == ["c2d_nl5", "c2d"] and rows["c2d_nl5"][1:4] == ["2", "30", "40.0 ± 14.1"]
    assert "WARNING: 'c2d_nl5' averages 2 runs that differ in model.width (64, 8)" in result.stderr

    result = run_compare(capsys, str(narrow), str(wide), str(base), "--label", f"{base}=C2D (ours)",
                        "--label", f"{tmp_path / 'sweep'}=NL5, both widths",
                        "--out", str(tmp_path / "labelled"))
    assert result.returncode == 0, result.stderr
    assert list(table_rows(tmp_path / "labelled" / "table.md")) == ["NL5, both widths", "C2D (ours)"]

    result = run_compare(capsys, str(base), "--group-by", "model.widht", "--out", str(tmp_path))
    assert result.returncode == 2 and "--group-by model.widht: no run has this setting" in result.stderr


def test_directory_without_event_files_is_a_clear_error(two_runs, tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    result = run_module("nlvideo.compare", str(two_runs["c2d"]), str(empty))
    assert result.returncode == 2
    assert f"no TensorBoard event files (events.out.tfevents.*) under {empty}" in result.stderr


def test_visualize_a_trained_checkpoint_writes_a_png(two_runs, tmp_path):
    checkpoint = sorted((two_runs["c2d_nl1"] / "checkpoints").glob("checkpoint_*.pt"))[-1]
    out = tmp_path / "attention.png"
    result = run_module(
        "nlvideo.visualize", "--checkpoint", str(checkpoint), "--sample", "1", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    image.verify()
    assert image.size == (1280, 740)  # the clip's 8 frames in two rows of large tiles


def test_visualised_clip_is_the_datasets_validation_view(synthetic_cfg):
    ds = build_dataset(synthetic_cfg, "val")
    clip, shown = load_clip(ds.records[3].path, synthetic_cfg)
    assert torch.equal(clip, ds[3 * ds.num_views]["clip"])
    assert shown.shape == (8, 48, 48, 3) and shown.dtype == "uint8"


@pytest.mark.parametrize("instantiation", ["gaussian", "embedded_gaussian", "dot_product", "concatenation"])
def test_attention_of_every_instantiation_is_a_distribution_over_keys(instantiation, tmp_path):
    torch.manual_seed(0)
    model = build_video_resnet(
        name="v",
        arch="c2d",
        num_classes=3,
        width=8,
        **{"nonlocal": {"positions": {"res3": [1]}, "instantiation": instantiation}},
    ).eval()
    clip = torch.randn(3, 8, 64, 64)
    att = block_attention(model, clip, "res3.nl1", query=(1, 2, 3))
    assert att.query_grid == (4, 8, 8) and att.weights.shape == (4, 4, 4)  # 1x2x2-pooled keys
    assert att.weights.min() >= 0 and abs(att.weights.sum() - 1) < 1e-5
    auto = block_attention(model, clip, "res3.nl1")  # fresh block = identity: any query, still valid
    assert all(0 <= q < g for q, g in zip(auto.query, auto.query_grid, strict=True))
    frames = (torch.rand(8, 64, 64, 3) * 255).byte().numpy()
    assert render(frames, att, tmp_path / f"{instantiation}.png").stat().st_size > 10_000


def test_bad_block_and_query_are_named():
    model = build_video_resnet(
        name="v", arch="c2d", num_classes=3, width=8, **{"nonlocal": {"positions": {"res3": [1]}}}
    ).eval()
    clip = torch.randn(3, 8, 64, 64)
    with pytest.raises(ValueError, match=r"no non-local block 'res4.nl4'; the model has: res3.nl1"):
        block_attention(model, clip, "res4.nl4")
    with pytest.raises(ValueError, match=r"query \(9, 0, 0\) outside the block's feature grid"):
        block_attention(model, clip, "res3.nl1", (9, 0, 0))


@pytest.mark.parametrize(("arguments", "status", "message"), [
    (["--block", "res9.nl0"], 2, "error: --block res9.nl0: no such non-local block; the model has: res"),
    (["--video", "{tmp}/missing.mp4"], 2, "error: --video {tmp}/missing.mp4 does not exist"),
    (["--video", "{tmp}/text.mp4"], 1, "error: cannot read {tmp}/text.mp4 (cannot open: "),
])
def test_visualize_refuses_a_bad_block_or_video_in_one_line(trained_checkpoint, tmp_path, arguments, status,
                                                             message):
    (tmp_path / "text.mp4").write_text("not a video\n" * 100)
    result = run_module("nlvideo.visualize", "--checkpoint", str(trained_checkpoint),
                        *(a.format(tmp=tmp_path) for a in arguments), "--out", str(tmp_path / "a.png"))
    assert result.returncode == status and result.stderr.startswith(message.format(tmp=tmp_path)), \
        result.stderr[-3000:]
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "a.png").exists()
