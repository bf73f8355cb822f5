"""Show what a non-local block looks at: a query position and where its attention goes across frames.

    python -m nlvideo.visualize --checkpoint RUN/checkpoints/checkpoint_000001000.pt --sample 0
    python -m nlvideo.visualize --checkpoint CKPT --video clip.mp4 --block res4.nl4 --query 2,3,4

The model and data settings come from the config stored in the checkpoint. The clip is the centre
clip and centre crop of the video (the validation view). The query is a position (t, y, x) of the
block's input feature grid; by default the one where the block changes the features most (largest
||z - x||, the "highest response"). The figure shows every frame of the clip with the query's
attention over the keys of that frame's time slice as a heat map (one colour scale for the whole
clip, so the frames compare), the query marked with a white cross and the top-k attended positions
with numbered circles, like the paper's Figure 1. For the softmax forms (gaussian, embedded
gaussian) a row of the map is already a distribution; for dot product and concatenation (1/N
normalisation, possibly negative for dot product) the row's absolute values are rescaled to sum to 1.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nlvideo.models.build import model_of_checkpoint
from nlvideo.models.nonlocal_block import NonLocalBlock
from nlvideo.models.pretrained import read_checkpoint
from nlvideo.models.spec import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Attention:
    """One block's attention for one query: weights on the key grid, in (T', Hk, Wk)."""

    block: str
    instantiation: str
    query: tuple[int, int, int]  # (t, y, x) on the query grid
    query_grid: tuple[int, int, int]
    weights: np.ndarray  # (T', Hk, Wk), sums to 1


def load_model(checkpoint: str | Path) -> tuple[torch.nn.Module, DictConfig]:
    """The model of a train.py checkpoint, in eval mode, with the run's config; a one-line
    :class:`ConfigError` for a file that is not one or a model without non-local blocks."""
    ckpt = read_checkpoint(str(checkpoint), key="--checkpoint")
    model = model_of_checkpoint(ckpt)
    if not model.num_nonlocal:
        raise ConfigError(f"--checkpoint {checkpoint}: its model {model.spec.name} has no non-local blocks "
                          "to visualise (a baseline); pass a checkpoint of a model with them, e.g. c2d_nl5")
    return model, OmegaConf.create(ckpt.saved["config"])


def load_clip(path: str | Path, data_cfg: DictConfig) -> tuple[torch.Tensor, np.ndarray]:
    """The validation view of a video: the normalised clip (3, T, H, W) and its frames for display.

    The clip comes from the dataset's own code path (:func:`nlvideo.data.read_clip` with the run's
    ``val`` :class:`~nlvideo.data.ClipSpec`): the decoding, frame sampling and transform that
    validation uses. Of its views only the centre clip and centre crop is taken, whatever
    ``data.val.num_clips``/``num_crops`` are.
    """
    from nlvideo.data import clip_spec, read_clip

    spec = replace(clip_spec(data_cfg, "val"), num_clips=1, num_crops=1)
    clip, _, _ = read_clip(spec, str(path))
    mean = torch.tensor(spec.mean).view(-1, 1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1, 1)
    shown = (clip * std + mean).clamp(0, 255).byte().permute(1, 2, 3, 0).numpy()  # (T, H, W, 3)
    return clip, shown


def block_attention(
    model: torch.nn.Module,
    clip: torch.Tensor,
    block: str | None = None,
    query: tuple[int, int, int] | None = None,
) -> Attention:
    """Run ``clip`` (3, T, H, W) through ``model`` and read one NL block's attention for one query."""
    blocks = dict(model.nonlocal_blocks())
    if not blocks:
        raise ValueError("the model has no non-local blocks to visualise")
    name = block or list(blocks)[-1]
    if name not in blocks:
        raise ValueError(f"no non-local block {name!r}; the model has: {', '.join(blocks)}")
    nl: NonLocalBlock = blocks[name]
    seen: dict[str, torch.Tensor] = {}
    hook = nl.register_forward_hook(lambda m, args, out: seen.update(x=args[0], z=out[0]))
    try:
        with torch.no_grad():
            _, maps = model(clip.unsqueeze(0), return_attention=True)
    finally:
        hook.remove()
    x, z = seen["x"][0].cpu(), seen["z"][0].cpu()
    grid = tuple(x.shape[1:])
    with torch.no_grad():
        key_grid = tuple(nl.phi(seen["x"]).shape[2:])  # phi is the (pooled) key embedding, or the input
    if query is None:  # where the block changes the features most
        response = (z - x).norm(dim=0)
        query = tuple(int(i) for i in np.unravel_index(int(response.argmax()), grid))
    if len(query) != 3 or any(not 0 <= q < g for q, g in zip(query, grid, strict=True)):
        raise ValueError(f"query {query} outside the block's feature grid (T, H, W) = {grid}")
    row = maps[name][0, int(np.ravel_multi_index(query, grid))].cpu()
    if nl.instantiation not in ("gaussian", "embedded_gaussian"):
        row = row.abs() / row.abs().sum().clamp_min(1e-12)
    return Attention(name, nl.instantiation, query, grid, row.reshape(key_grid).numpy())


def attention_figure(frames: np.ndarray, att: Attention, topk: int = 5, title: str = "") -> Figure:
    """A matplotlib figure of the clip's frames with the attention heat map, the query (cross) and the
    top-k keys (circles): saved by :func:`render`, sent to TensorBoard by the trainer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_frames, h, w = frames.shape[:3]
    t_keys, hk, wk = att.weights.shape
    tq, yq, xq = att.query
    tg, hq, wq = att.query_grid
    frame_of = lambda t, grid_t: min(int((t + 0.5) * t_frames / grid_t), t_frames - 1)  # noqa: E731
    vmax = float(att.weights.max()) or 1.0
    top = np.argsort(att.weights, axis=None)[::-1][:topk]
    # Two rows of large tiles, not one long strip: TensorBoard fits an image to its card's width, and
    # a strip of 8 frames shrank to ~240 px high, titles unreadable.
    rows = 2 if t_frames > 4 else 1
    cols = -(-t_frames // rows)
    fig, grid = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows + 0.6), squeeze=False)
    axes = grid.ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= t_frames:
            continue
        ax.imshow(frames[i])
        key_t = min(i * t_keys // t_frames, t_keys - 1)  # the keys' time step covering this frame
        ax.imshow(att.weights[key_t], cmap="jet", alpha=0.45, vmin=0, vmax=vmax, extent=(0, w, h, 0),
                  interpolation="bilinear")
        ax.set_title(f"frame {i} (keys t={key_t})", fontsize=13)
    axes[frame_of(tq, tg)].plot((xq + 0.5) * w / wq, (yq + 0.5) * h / hq, "wx", markersize=18, mew=4)
    for rank, flat in enumerate(top, 1):
        t, y, x = np.unravel_index(flat, att.weights.shape)
        ax = axes[frame_of(t, t_keys)]
        cx, cy = (x + 0.5) * w / wk, (y + 0.5) * h / hk
        ax.plot(cx, cy, "o", mfc="none", mec="white", markersize=16, mew=2.5)
        ax.annotate(str(rank), (cx, cy), color="white", fontsize=12, ha="center", va="center")
    fig.suptitle(
        title or f"{att.block} ({att.instantiation}): query (t,y,x)={att.query}, top-{topk} keys", fontsize=14
    )
    fig.tight_layout()
    return fig


def render(frames: np.ndarray, att: Attention, out: str | Path, topk: int = 5, title: str = "") -> Path:
    """:func:`attention_figure` written to ``out`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = attention_figure(frames, att, topk, title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _parse_query(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--query expects t,y,x (three integers), got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a train.py checkpoint (.pt)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--video", help="a video file")
    source.add_argument("--sample", type=int, default=0, help="index of a validation video of the run's data")
    parser.add_argument("--block", help="NL block name, e.g. res4.nl4 (default: the last block)")
    parser.add_argument(
        "--query", type=_parse_query, help="t,y,x on the block's feature grid (default: auto)"
    )
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--out", default="attention.png")
    args = parser.parse_args(argv)

    if args.video is not None and not Path(args.video).is_file():
        parser.exit(2, f"error: --video {args.video} does not exist\n")
    try:
        model, cfg = load_model(args.checkpoint)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    blocks = [name for name, _ in model.nonlocal_blocks()]
    if args.block is not None and args.block not in blocks:
        parser.exit(2, f"error: --block {args.block}: no such non-local block; the model has: "
                       f"{', '.join(blocks)}\n")
    classes_file = Path(args.checkpoint).resolve().parent.parent / "classes.json"  # run_dir/checkpoints/x.pt
    names = json.loads(classes_file.read_text()) if classes_file.is_file() else None
    video = args.video
    label = ""
    if video is None:
        from nlvideo.data import build_dataset

        ds = build_dataset(cfg.data, "val")
        if not 0 <= args.sample < ds.num_videos:
            parser.error(
                f"--sample {args.sample} out of range: the validation split has {ds.num_videos} videos"
            )
        record = ds.records[args.sample]
        video = record.path
        label = ", ".join(ds.class_names[i] for i in record.video_labels)
    from nlvideo.data import DecodeError

    try:
        clip, frames = load_clip(video, cfg.data)
    except DecodeError as exc:
        parser.exit(1, f"error: cannot read {video} ({exc.reason})\n")
    try:
        att = block_attention(model, clip, args.block, args.query)
    except ValueError as exc:  # --query outside the block's feature grid
        parser.exit(2, f"error: --query: {exc}\n")
    with torch.no_grad():
        pred = int(model(clip.unsqueeze(0)).argmax())
    title = (
        f"{Path(video).name}: {att.block} ({att.instantiation}), query {att.query}"
        + (f" | label {label}" if label else "")
        + f" | predicted class {names[pred] if names else pred}"
    )
    out = render(frames, att, args.out, args.topk, title)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
