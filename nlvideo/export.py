"""Export a trained model for deployment and check the file against the eager model on a real clip.

    python scripts/export.py checkpoint=CKPT.pt format=onnx       # CKPT.onnx, run by onnxruntime
    python scripts/export.py checkpoint=CKPT.pt format=torchscript video=clip.mp4 out=model.pt

Formats (:data:`FORMATS`): ``onnx`` (``torch.onnx.export`` from the ExportedProgram, opset chosen by
torch, one file with the weights), ``torchscript`` (``torch.jit.trace``; load with
``torch.jit.load``) and ``exported_program`` (``torch.export``; load with
``torch.export.load(path).module()``). The batch dimension is dynamic in the ONNX and ExportedProgram
files, so one clip or all views of a video go in one call; a TorchScript trace also runs other
batch sizes (tested), but nothing in it declares them.

All three work because the NL block takes its plain-ATen ``"sdpa"`` path while it is traced or
exported (:func:`nlvideo.models.nonlocal_block.select_path`). Clip size and frame count are those of
the checkpoint's test views (fixed in the file); normalisation is not part of the exported graph:
feed clips as :func:`nlvideo.data.read_clip` makes them.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from nlvideo.data import DecodeError, build_dataset, read_clip
from nlvideo.models import ConfigError
from nlvideo.predict import Predictor

Runner = Callable[[torch.Tensor], torch.Tensor]
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported_program": ".pt2"}
TOLERANCE = 1e-4  # max |exported - eager| / max |eager| over the logits


def export_model(model: torch.nn.Module, example: torch.Tensor, fmt: str, path: str | os.PathLike) -> Path:
    """Write ``model`` (put in eval mode) traced on ``example`` (B >= 2 clips) to ``path`` as ``fmt``.

    The example batch has at least 2 clips because ``torch.export`` specialises a dimension of size 1.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not allowed; choose one of: {', '.join(FORMATS)}")
    if example.shape[0] < 2:
        raise ValueError("export_model: the example batch needs at least 2 clips (a size-1 batch is fixed)")
    model.eval()
    path = Path(path)
    with warnings.catch_warnings():
        # Shape checks that hold for every clip of this size; torch's own deprecation inside its exporter.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
        if fmt == "torchscript":
            torch.jit.trace(model, example, check_trace=False).save(str(path))  # run_exported checks it
            return path
        dynamic = ({0: torch.export.Dim("batch", min=1)},)
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        if fmt == "exported_program":
            torch.export.save(program, path)
        else:
            _require_onnx()
            torch.onnx.export(program, (example,), path, dynamo=True, external_data=False, verbose=False,
                              input_names=["clip"], output_names=["logits"])
    return path


def load_exported(path: str | os.PathLike, fmt: str) -> Runner:
    """``run(clips) -> logits`` for a file written by :func:`export_model` (CPU)."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
        return lambda x: module(x)
    if fmt == "exported_program":
        module = torch.export.load(path).module()
        return lambda x: module(x)
    _require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"clip": x.numpy()})[0])


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|: one number for a whole batch of logits."""
    out, ref = out.detach().float(), ref.detach().float()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _require_onnx() -> None:
    """format=onnx needs onnx, onnxscript (torch's exporter) and onnxruntime: say so in one line."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"format=onnx needs onnx, onnxscript and onnxruntime ({exc}): "
                          "pip install -c constraints/cpu.txt -e '.[dev]'") from None


def check_clip(predictor: Predictor, video: str | None) -> tuple[str, torch.Tensor]:
    """The first two test views of ``video`` (default: the first video of the checkpoint's test split)."""
    if video is None:
        try:
            video = str(build_dataset(predictor.config["data"], "test").records[0].path)
        except (ValueError, FileNotFoundError, IndexError) as exc:
            raise ConfigError(f"no video= given and the checkpoint's test split cannot be read ({exc}): "
                              "pass video=/path/to/clip.mp4") from None
    views = range(min(2, predictor.num_views))
    try:
        clips = torch.stack([read_clip(predictor.spec, video, v)[0] for v in views])
    except DecodeError as exc:
        raise ConfigError(f"video={video} cannot be read ({exc.reason}); pass another video=") from None
    return video, clips.expand(2, *clips.shape[1:]) if len(clips) == 1 else clips


def run(cfg: DictConfig) -> int:
    """``scripts/export.py``: export, reload, compare with eager on one clip and on a batch of two;
    returns the exit status (1 when the difference exceeds :data:`TOLERANCE`)."""
    if cfg.checkpoint is None or not Path(str(cfg.checkpoint)).is_file():
        raise ConfigError(f"checkpoint={cfg.checkpoint} is not a file: pass checkpoint=/path/to/ckpt.pt")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is not allowed; choose one of: {', '.join(FORMATS)}")
    checkpoint = Path(str(cfg.checkpoint))
    out = Path(str(cfg.out)) if cfg.out else checkpoint.with_suffix(FORMATS[cfg.format])
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    video, clips = check_clip(predictor, cfg.video)
    export_model(predictor.model, clips, cfg.format, out)
    run_exported = load_exported(out, cfg.format)
    worst = 0.0
    with torch.inference_mode():
        for batch in (clips[:1], clips):
            err = relative_error(run_exported(batch), predictor.model(batch))
            print(f"{cfg.format}, {len(batch)} clip(s) of {video}: max relative difference {err:.1e}")
            worst = max(worst, err)
    size = f"{out} ({out.stat().st_size / 2**20:.1f} MiB)"
    if worst > TOLERANCE:
        print(f"error: {size} differs from the eager model by more than {TOLERANCE:.0e}", file=sys.stderr)
        return 1
    print(f"wrote {size}")
    return 0
