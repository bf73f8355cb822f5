"""``torch.compile`` (inductor, on CPU here): what ``trainer.compile=true`` and ``bench_train``'s
compile rows rely on before a GPU runs them.

* every computation path of the non-local block is captured as one graph (a graph break splits the
  step and costs a Python round trip per break, per step);
* a compiled training step of a whole non-local network matches the eager one to rounding.

Checkpoints written by compiled runs and eager runs are interchangeable:
``tests/test_train_run.py::test_compiled_and_eager_runs_resume_each_others_checkpoints``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo

from nlvideo.factory import create_model
from nlvideo.models.nonlocal_block import INSTANTIATIONS, NonLocalBlock, select_path


def graph_breaks(fn, *args) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    return explained.graph_break_count, [b.reason for b in explained.break_reasons]


# (impl, autocast, grad) -> the path select_path must take for a CPU input: all four are compiled.
PATHS = {
    "naive": ("naive", False, True),
    "cpu_chunked": ("efficient", False, True),
    "sdpa_autocast": ("efficient", True, True),
    "sdpa_no_grad": ("efficient", False, False),
}


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize("case", sorted(PATHS))
def test_every_nonlocal_path_compiles_without_graph_breaks(instantiation, case):
    impl, autocast, grad = PATHS[case]
    block = NonLocalBlock(16, instantiation=instantiation, impl=impl)
    x = torch.randn(2, 16, 4, 6, 6, requires_grad=grad)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(grad):
        path = select_path(block, x).path
        breaks, reasons = graph_breaks(block, x)
    assert path == case.split("_autocast")[0].split("_no_grad")[0]
    assert breaks == 0, reasons


@pytest.mark.slow
def test_compiled_training_step_of_a_nonlocal_network_matches_eager():
    """An I3D with NL blocks in res3 and res4 (fewer residual blocks than R50, so it compiles in
    seconds), on the CPU memory-lean path (custom autograd Functions, chunked loops): loss, every
    gradient and the weights after two SGD steps equal eager's to float32 rounding."""
    torch.manual_seed(0)
    eager = create_model("i3d", num_classes=5, width=8, stage_depths=[1, 2, 2, 1], dropout=0.0,
                         nonlocal_={"positions": ["res3.1", "res4.1"], "impl": "efficient"})
    assert graph_breaks(copy.deepcopy(eager), torch.randn(2, 3, 8, 32, 32))[0] == 0
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net)
    x, y = torch.randn(2, 3, 8, 32, 32), torch.tensor([1, 3])
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, compiled_net)]
    for _ in range(2):
        losses = []
        for model, opt in zip((eager, compiled), opts, strict=True):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(eager.named_parameters(), compiled_net.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-6, msg=name)
        for opt in opts:
            opt.step()
    for (name, p), q in zip(eager.state_dict().items(), compiled_net.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)


# A small I3D with NL blocks in two stages (compiles in seconds), without dropout: inductor draws
# dropout masks from its own generator, so eager and compiled runs would differ by more than rounding.
SMALL_NL = ["model=i3d", "model.stage_depths=[1,2,2,1]", "model.nonlocal.positions=[res3.1,res4.1]",
            "model.dropout=0.0"]


@pytest.mark.slow
def test_compiled_and_eager_runs_resume_each_others_checkpoints(synthetic_root, tmp_path):
    """train.py with ``trainer.compile=true`` resumes an eager run's checkpoint, and an eager run
    resumes the compiled run's: eager iterations 1-4, compiled 5-6 (SIGKILLed while writing
    checkpoint 8), eager 7-8 end at the uninterrupted eager run's weights (to float32 rounding:
    inductor fuses differently). One compiled run: compiling costs about a minute of CPU."""
    from tests.test_train_run import REFERENCE, load_model_state, run_app, tiny_overrides

    common = [*tiny_overrides(synthetic_root), *REFERENCE, *SMALL_NL]
    final = "checkpoints/checkpoint_000000008.pt"
    eager, mixed = tmp_path / "eager", tmp_path / "mixed"
    r = run_app("train.py", *common, f"hydra.run.dir={eager}")
    assert r.returncode == 0, r.stderr[-3000:]

    r = run_app("train.py", *common, "trainer.compile=true", "trainer.debug.kill_during_checkpoint=8",
                f"trainer.resume={eager / 'checkpoints' / 'checkpoint_000000004.pt'}",
                f"hydra.run.dir={mixed}", timeout=600)
    assert r.returncode == -9, r.stderr[-3000:]
    assert [p.name for p in (mixed / "checkpoints").glob("*.pt")] == ["checkpoint_000000006.pt"]
    r = run_app("train.py", *common, f"hydra.run.dir={mixed}")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (mixed / "train.log").read_text()
    assert "trainer.compile: False -> True" in log and "trainer.compile: True -> False" in log
    assert f"resumed from {mixed / 'checkpoints' / 'checkpoint_000000006.pt'} (epoch 2, step 2" in log

    want, got = load_model_state(eager / final), load_model_state(mixed / final)
    assert set(got) == set(want)  # no ``_orig_mod.`` prefix from the compiled wrapper
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-3, atol=1e-5, msg=name)
