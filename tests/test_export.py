"""Export for deployment: the NL block's path while traced or without gradient, and every export format
of the shipped models (timm-style: export -> run -> logits match eager)."""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
from torch import nn

import nlvideo
from nlvideo.data import read_clip
from nlvideo.export import FORMATS, export_model, load_exported, relative_error
from nlvideo.models import INSTANTIATIONS, NonLocalBlock
from nlvideo.models import nonlocal_block as nl

ONNX_MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
X_SHAPE = (2, 8, 4, 6, 8)  # a 3-D NL block's input (B, C, T, H, W)
CLIPS = (2, 3, 8, 32, 32)  # tiny clips: res4 is 2x2, so the sub-sampled res4 blocks still see 1 position


# ---- select_path: the traceable path while tracing / exporting, and when no gradient is needed ----

@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "frozen"])
def test_no_gradient_needed_takes_the_sdpa_path(context):
    block = NonLocalBlock(8)
    if context == "frozen":  # grad mode on, but neither the input nor a parameter requires a gradient
        block.requires_grad_(False)
    modes = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    with modes.get(context, contextlib.nullcontext)():
        choice = block.path_for(torch.randn(X_SHAPE))
    assert choice.path == "sdpa" and "no gradient" in choice.reason


def test_a_gradient_through_a_frozen_block_keeps_the_cpu_chunked_path():
    block = NonLocalBlock(8, impl="efficient").requires_grad_(False)
    assert block.path_for(torch.randn(X_SHAPE, requires_grad=True)).path == "cpu_chunked"
    training = NonLocalBlock(8, impl="efficient")  # parameters need a gradient
    assert training.path_for(torch.randn(X_SHAPE)).path == "cpu_chunked"
    # impl=auto trains fp32 on the naive path, measured faster on CPU (test_nonlocal_block.py)
    assert NonLocalBlock(8).path_for(torch.randn(X_SHAPE)).path == "naive"


@pytest.mark.parametrize("tracer", ["jit.trace", "export"])
def test_tracing_and_exporting_take_the_sdpa_path(tracer, monkeypatch):
    """With grad mode on and trainable parameters, only the tracing rule can send the block to sdpa."""
    choices: list[nl.PathChoice] = []
    select = nl.select_path
    monkeypatch.setattr(nl, "select_path", lambda *args: choices.append(select(*args)) or choices[-1])
    block, x = NonLocalBlock(8).eval(), torch.randn(X_SHAPE)
    if tracer == "jit.trace":
        torch.jit.trace(block, x, check_trace=False)
    else:
        torch.export.export(block, (x,))
    assert [c.path for c in choices] == ["sdpa"] and "tracing" in choices[0].reason, choices


# ---- every format, the shipped configs and all four pairwise functions ----

EMBEDDINGS = {"theta", "phi", "concat_project"}  # the NL convs whose scale makes the attention peaked


def with_live_blocks(model: nn.Module) -> nn.Module:
    """Random BN affines and statistics (a fresh NL block's zero BN makes it the identity, which would
    test nothing) and NL embeddings theta/phi/w_f large enough for a peaked attention."""
    torch.manual_seed(0)
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        elif isinstance(m, (nn.Conv2d, nn.Conv3d)) and EMBEDDINGS & set(name.split(".")):
            nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
    return model.eval()


MODELS = ("c2d", "c2d_nl5", "i3d_nl5", "i3d_nl10")


def check_export(model: nn.Module, example: torch.Tensor, fmt: str, path) -> None:
    """Export, reload, run on the example batch and on one clip (the batch is dynamic): within 1e-4 of
    eager with grad mode on, i.e. of the NL blocks' path that training takes (impl=auto, fp32: naive)."""
    if fmt == "onnx" and ONNX_MISSING:
        pytest.skip(f"format=onnx needs {', '.join(ONNX_MISSING)} (the dev extra)")
    run = load_exported(export_model(model, example, fmt, path / f"model{FORMATS[fmt]}"), fmt)
    for batch in (example, example[:1]):
        assert relative_error(run(batch), model(batch).detach()) <= 1e-4


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_exports_and_matches_eager(name, fmt, tmp_path):
    model = with_live_blocks(nlvideo.create_model(name, num_classes=5, width=8))
    check_export(model, torch.randn(CLIPS), fmt, tmp_path)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_every_pairwise_function_exports_and_matches_eager(instantiation, fmt, tmp_path):
    """The block alone (the backbone around it is the same for all four, and tested above)."""
    block = with_live_blocks(NonLocalBlock(16, instantiation=instantiation))
    check_export(block, torch.randn(2, 16, 4, 8, 8), fmt, tmp_path)


def test_export_script_writes_the_file_and_checks_it_on_a_real_clip(trained_checkpoint, synthetic_root,
                                                                     tmp_path):
    """scripts/export.py on a train.py checkpoint (checked on the test split's first video: no video=),
    and the file it wrote on another real clip."""
    from tests.test_train_run import run_app

    out = tmp_path / "model.torchscript.pt"
    r = run_app("scripts/export.py", f"checkpoint={trained_checkpoint}", "format=torchscript", f"out={out}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("max relative difference") == 2 and f"wrote {out}" in r.stdout
    predictor = nlvideo.Predictor.from_checkpoint(trained_checkpoint, views=1, device="cpu")
    video = str(sorted((synthetic_root / "videos").glob("*.mp4"))[-1])
    clip = read_clip(predictor.spec, video)[0][None]
    torch.testing.assert_close(torch.jit.load(str(out))(clip), predictor.model(clip).detach())
    r = run_app("scripts/export.py", f"checkpoint={trained_checkpoint}", "format=tflite")
    assert r.returncode == 2 and "error: format='tflite' is not allowed" in r.stderr


# ---- scripts/export.py: where the file goes, what it takes ----

def export_app(*overrides: str, kill_at: str | None = None):
    """scripts/export.py in a real process; ``kill_at``: its kill point (SIGKILL)."""
    from tests.test_train_run import REPO, app_env

    env = app_env() | ({"NLVIDEO_DEBUG_SIGKILL_AT": kill_at} if kill_at else {})
    return subprocess.run([sys.executable, "scripts/export.py", *overrides], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)


def test_a_killed_export_leaves_the_previous_file_whole(trained_checkpoint, tmp_path):
    out = tmp_path / "model.torchscript.pt"
    r = export_app(f"checkpoint={trained_checkpoint}", "format=torchscript", f"out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    good = out.read_bytes()
    r = export_app(f"checkpoint={trained_checkpoint}", "format=torchscript", f"out={out}", kill_at="exported")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert out.read_bytes() == good
    torch.jit.load(str(out))  # still the good file


@pytest.mark.parametrize(("out", "message"), [
    ("{tmp}/missing/model.onnx", "out={tmp}/missing/model.onnx: directory {tmp}/missing does not exist"),
    ("{tmp}", "out={tmp} is a directory: name the file to write"),
    ("/sys/model.onnx", "out=/sys/model.onnx: cannot write in /sys ("),  # read-only, also for root
])
def test_export_refuses_an_out_it_cannot_write_before_exporting(trained_checkpoint, tmp_path, out, message):
    if out.startswith("/sys") and not _write_fails("/sys"):
        pytest.skip("no read-only /sys on this machine")
    r = export_app(f"checkpoint={trained_checkpoint}", f"out={out.format(tmp=tmp_path)}")
    expected = f"error: {message.format(tmp=tmp_path)}"
    assert r.returncode == 2 and r.stderr.startswith(expected), r.stderr[-3000:]
    assert len(r.stderr.splitlines()) == 1 and r.stdout == ""


def _write_fails(folder: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return False
    except OSError:
        return True


@pytest.mark.skipif(bool(ONNX_MISSING), reason="format=onnx needs the dev extra")
def test_onnx_export_names_its_axes_and_records_its_input(trained_checkpoint, tmp_path):
    """Fixed: batch axis named ``batch``, the test views' T and crop in the metadata and the log.
    dynamic=true: onnxruntime runs another frame count and crop, matching eager."""
    import onnx
    import onnxruntime

    predictor = nlvideo.Predictor.from_checkpoint(trained_checkpoint, views=1, device="cpu")
    t, crop = predictor.spec.num_frames, predictor.spec.crop_size
    fixed, dynamic = tmp_path / "fixed.onnx", tmp_path / "dynamic.onnx"
    r = export_app(f"checkpoint={trained_checkpoint}", f"out={fixed}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"input batch x 3 x {t} x {crop} x {crop} (batch >= 1)" in r.stdout
    model = onnx.load(str(fixed))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["input_shape"] == f"batch x 3 x {t} x {crop} x {crop}" and props["batch_range"] == ">= 1"
    assert props["mean"] == str(list(predictor.spec.mean))
    assert [d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim] == ["batch", ""]

    r = export_app(f"checkpoint={trained_checkpoint}", f"out={dynamic}", "dynamic=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "input batch x 3 x frames x height x width (batch >= 1; frames >= " in r.stdout
    session = onnxruntime.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", 3, "frames", "height", "width"]]
    clip = torch.randn(1, 3, 2 * t, crop + 16, crop - 8)
    with torch.inference_mode():
        expected = predictor.model(clip)
    assert relative_error(torch.from_numpy(session.run(None, {"clip": clip.numpy()})[0]), expected) <= 1e-4
    r = export_app(f"checkpoint={trained_checkpoint}", "format=torchscript", "dynamic=true")
    assert r.returncode == 2 and "error: dynamic=true is for format=onnx and exported_program" in r.stderr
