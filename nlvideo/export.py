"""Export a trained model for deployment and check the file against the eager model on a real clip.

    python scripts/export.py checkpoint=CKPT.pt format=onnx       # CKPT.onnx, run by onnxruntime
    python scripts/export.py checkpoint=CKPT.pt format=onnx dynamic=true   # any frame count and crop
    python scripts/export.py checkpoint=CKPT.pt format=torchscript video=clip.mp4 out=model.pt

Formats (:data:`FORMATS`): ``onnx`` (``torch.onnx.export`` from the ExportedProgram, opset chosen by
torch, one file with the weights), ``torchscript`` (``torch.jit.trace``; load with
``torch.jit.load``) and ``exported_program`` (``torch.export``; load with
``torch.export.load(path).module()``). The batch dimension is dynamic in the ONNX and ExportedProgram
files (named ``batch`` in ONNX), so one clip or all views of a video go in one call; a TorchScript
trace also runs other batch sizes (tested), but nothing in it declares them.

Frame count and crop size are those of the checkpoint's test views, fixed in the file, unless
``dynamic=true`` (ONNX and ExportedProgram): then they are dynamic too, within the minimum sizes the
exporter finds (ONNX axes ``frames``, ``height``, ``width``). An ONNX file records its input shape,
its dynamic axes with their ranges and the normalisation in its metadata (``metadata_props``), and
the command prints the same. Normalisation is not part of the exported graph: feed clips as
:func:`nlvideo.data.read_clip` makes them.

All three work because the NL block takes its plain-ATen ``"sdpa"`` path while it is traced or
exported (:func:`nlvideo.models.nonlocal_block.select_path`).

The file is written under a temporary name in ``out``'s directory, reloaded and compared with eager,
and renamed to ``out`` only when it matches: a killed or failed export leaves the previous ``out``
as it was.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig

from nlvideo.data import DecodeError, build_dataset, read_clip
from nlvideo.engine.evaluate import atomic_path
from nlvideo.engine.faults import sigkill_point
from nlvideo.models import ConfigError
from nlvideo.predict import Predictor

Runner = Callable[[torch.Tensor], torch.Tensor]
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported_program": ".pt2"}
TOLERANCE = 1e-4  # max |exported - eager| / max |eager| over the logits
AXES = ("batch", "channels", "frames", "height", "width")  # a clip batch (B, 3, T, H, W)
DYNAMIC_AXES = (0, 2, 3, 4)  # with dynamic=true; else the batch axis only


def export_model(model: torch.nn.Module, example: torch.Tensor, fmt: str, path: str | os.PathLike,
                 dynamic: bool = False, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` (put in eval mode) traced on ``example`` (B >= 2 clips) to ``path`` as ``fmt``.

    The example batch has at least 2 clips because ``torch.export`` specialises a dimension of size 1.
    ``dynamic``: frames, height and width dynamic too (not ``torchscript``: a trace declares no
    shapes). ``metadata``: extra ONNX ``metadata_props`` beside the input shape (:func:`onnx_shape`).
    """
    check_format(fmt, dynamic)
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
        axes = DYNAMIC_AXES if dynamic else (0,)
        # AUTO: the exporter keeps an axis dynamic over the sizes the model allows, or fixes it
        dims = {a: torch.export.Dim("batch", min=1) if a == 0 else torch.export.Dim.AUTO for a in axes}
        program = torch.export.export(model, (example,), dynamic_shapes=(dims,))
        if fmt == "exported_program":
            torch.export.save(program, path)
        else:
            _require_onnx()
            torch.onnx.export(program, (example,), path, dynamo=True, external_data=False, verbose=False,
                              input_names=["clip"], output_names=["logits"])
            name_onnx_axes(path, ranges(program), metadata or {})
    return path


def check_format(fmt: str, dynamic: object) -> None:
    """``format=`` one of :data:`FORMATS`; ``dynamic=`` a boolean, true only where a file declares its
    input shapes."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not allowed; choose one of: {', '.join(FORMATS)}")
    if not isinstance(dynamic, bool):
        raise ConfigError(f"dynamic={dynamic!r} must be true or false")
    if dynamic and fmt == "torchscript":
        raise ConfigError("dynamic=true is for format=onnx and exported_program: a TorchScript trace "
                          "declares no input shapes")


def ranges(program: torch.export.ExportedProgram) -> dict[str, str]:
    """The exporter's symbol for each dynamic axis of the input -> its range, e.g. ``"s0": ">= 17"``."""
    from torch.utils._sympy.numbers import int_oo

    out = {}
    for symbol, bounds in program.range_constraints.items():
        upper = "" if bounds.upper == int_oo else f", <= {int(bounds.upper)}"
        out[str(symbol)] = f">= {int(bounds.lower)}{upper}"
    return out


def name_onnx_axes(path: Path, symbol_ranges: Mapping[str, str], metadata: Mapping[str, str]) -> None:
    """Rename the exporter's axis symbols (``s77``, ...) after :data:`AXES` throughout the graph, and
    record the input shape, the dynamic axes' ranges and ``metadata`` in the file's metadata_props."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    names = {d.dim_param: AXES[i] for i, d in enumerate(dims) if d.dim_param}
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]
    props = {"input_shape": onnx_shape(model), **{f"{names[s]}_range": r for s, r in symbol_ranges.items()
                                                    if s in names}, **metadata}
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def onnx_shape(model) -> str:
    """``clip`` input shape of an ONNX model, e.g. ``batch x 3 x 8 x 224 x 224``."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return " x ".join(d.dim_param or str(d.dim_value) for d in dims)


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


def output_path(cfg: DictConfig, checkpoint: Path) -> Path:
    """``out=`` (default: the checkpoint's path with the format's ending), refused in one line when it
    names a folder or its folder is missing or not writable: before the model is built and traced."""
    out = Path(str(cfg.out)).expanduser() if cfg.out else checkpoint.with_suffix(FORMATS[cfg.format])
    if out.is_dir():
        raise ConfigError(f"out={out} is a directory: name the file to write")
    if not out.parent.is_dir():
        raise ConfigError(f"out={out}: directory {out.parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=out.parent):  # a real write: permissions, read-only mounts, quota
            pass
    except OSError as exc:
        raise ConfigError(f"out={out}: cannot write in {out.parent} ({exc.strerror or exc})") from None
    return out


def run(cfg: DictConfig) -> int:
    """``scripts/export.py``: export to a temporary file, reload, compare with eager on one clip and on
    a batch of two, then rename it to ``out``; returns the exit status (1 when the difference exceeds
    :data:`TOLERANCE`: ``out`` is then left as it was, or when the file cannot be written)."""
    if cfg.checkpoint is None or not Path(str(cfg.checkpoint)).is_file():
        raise ConfigError(f"checkpoint={cfg.checkpoint} is not a file: pass checkpoint=/path/to/ckpt.pt")
    check_format(cfg.format, cfg.dynamic)
    checkpoint = Path(str(cfg.checkpoint))
    out = output_path(cfg, checkpoint)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    video, clips = check_clip(predictor, cfg.video)
    spec = predictor.spec
    metadata = {"mean": str(list(spec.mean)), "std": str(list(spec.std)), "input": "clip", "output": "logits"}
    try:
        with atomic_path(out) as tmp:
            export_model(predictor.model, clips, cfg.format, tmp, cfg.dynamic, metadata)
            sigkill_point("exported")
            exported = load_exported(tmp, cfg.format)
            worst = compare_with_eager(predictor.model, exported, clips, cfg.format, video)
            if worst > TOLERANCE:
                raise ExportMismatch(worst)
            size = f"{out} ({tmp.stat().st_size / 2**20:.1f} MiB)"
    except ExportMismatch as exc:
        print(f"error: the {cfg.format} export differs from the eager model by {exc.args[0]:.1e} (more "
              f"than {TOLERANCE:.0e}): {out} not written", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {size}; input {input_description(out, cfg.format, clips, cfg.dynamic)}")
    return 0


class ExportMismatch(Exception):
    """The exported file's logits differ from eager by more than :data:`TOLERANCE` (args: the error)."""


def compare_with_eager(model: torch.nn.Module, run_exported: Runner, clips: torch.Tensor, fmt: str,
                       video: str) -> float:
    """The worst relative difference of the exported model from eager, on one clip and on two."""
    worst = 0.0
    with torch.inference_mode():
        for batch in (clips[:1], clips):
            err = relative_error(run_exported(batch), model(batch))
            print(f"{fmt}, {len(batch)} clip(s) of {video}: max relative difference {err:.1e}")
            worst = max(worst, err)
    return worst


def input_description(path: Path, fmt: str, clips: torch.Tensor, dynamic: bool) -> str:
    """What the file takes, for the log: the ONNX file's own record, or the shape the export declared."""
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        ranges_ = [f"{k[:-len('_range')]} {v}" for k, v in props.items() if k.endswith("_range")]
        return f"{props['input_shape']} ({'; '.join(ranges_)}), mean {props['mean']}, std {props['std']}"
    shape = ["batch", *map(str, clips.shape[1:])]
    if dynamic:
        shape = [AXES[i] if i in DYNAMIC_AXES else d for i, d in enumerate(shape)]
    note = "" if fmt != "torchscript" else " (traced at this shape; nothing in the file declares it)"
    return " x ".join(shape) + note
