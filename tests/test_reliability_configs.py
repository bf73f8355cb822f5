"""Bad configs fail in one line that names the key and the allowed values, with exit status 2 and no
traceback, before any data is read: data.root points at a synthetic dataset that does not exist yet,
which reading data would generate (so the folder still being absent proves nothing was read).
(Other keys -- optim.schedule, trainer.amp, keep_last ... -- are in tests/test_train_config.py.)
"""

from __future__ import annotations

import pytest

from nlvideo.engine.config import ConfigError, check_command_line, validate_config
from tests.test_train_config import CONFIGS, composed
from tests.test_train_run import run_app

CASES = [
    (["model=xyz"],
     "model=xyz is not allowed; choose one of: c2d, c2d_nl1, c2d_nl10, c2d_nl5, i3d, i3d_nl1, i3d_nl10, "
     "i3d_nl5, i3d_r101, i3d_r101_nl5"),
    (["clip=16x4"], "clip=16x4 is not allowed; choose one of: 32x2, 8x8"),
    (["model.nonlocal.instantiation=gausian"],
     "model.nonlocal.instantiation='gausian' is not allowed; choose one of: gaussian, embedded_gaussian, "
     "dot_product, concatenation"),
    (["model.arch=x3d"], "model.arch='x3d' is not allowed; choose one of: c2d, i3d"),
    (["model.nonlocal.positions=[res6.0]"],
     "model.nonlocal.positions key='res6' is not allowed; choose one of: res2, res3, res4, res5"),
    (["model=c2d_nl5", "model.nonlocal.positions=[res4.1,res4.6]"],
     "model.nonlocal.positions.res4=[1, 6]: block indices must be distinct and in 0..5 (res4 has 6 blocks)"),
    (["data.num_frames=7"],
     "data.num_frames=7 does not fit model.input_variant=8x8: it must be a positive multiple of its "
     "temporal stride 2"),
    (["model=i3d_nl5", "clip=32x2", "data.num_frames=12"],
     "data.num_frames=12 does not fit model.input_variant=32x2: it must be a positive multiple of its "
     "temporal stride 8"),
    (["data=kinetics400", "data.root={absent}"],
     "data.root={absent} is not a directory: pass data.root=/path/to/kinetics400 (the folder holding its "
     "videos and annotation lists)"),
    (["data=kinetics400", "data.root=???"],
     "data.root is required for data=kinetics400: pass data.root=/path/to/kinetics400"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 must be a finite number > 0"),
    # issue 13: nonsense that was accepted (silently wrong clips, validation of nothing, epochs=1) ...
    (["data.sampling_rate=0"], "data.sampling_rate=0 must be an integer >= 1"),
    (["data.sampling_rate=-2"], "data.sampling_rate=-2 must be an integer >= 1"),
    (["data.target_fps=-30"], "data.target_fps=-30 must be null or a finite number > 0"),
    (["data.target_fps=0"], "data.target_fps=0 must be null or a finite number > 0"),
    (["data.val.num_clips=0"], "data.val.num_clips=0 must be an integer >= 1"),
    (["trainer.epochs=1.5"], "trainer.epochs=1.5 must be an integer >= 1"),
    (["trainer.sync_period=0"], "trainer.sync_period=0 must be auto or an integer >= 1"),
    (["optim.lr=inf"], "optim.lr=inf must be a finite number > 0"),
    (["data.std=0"], "data.std=0 must be a finite number > 0 or a list of 3 (one per RGB channel)"),
    # ... or that failed with a traceback, several only at the first batch
    (["optim.lr=abc"], "optim.lr='abc' must be a finite number > 0"),
    (["data.batch_size=eight"], "data.batch_size='eight' must be an integer >= 1"),
    (["data.num_workers=-1"], "data.num_workers=-1 must be an integer >= 0"),
    (["data.mean=[1,2]"], "data.mean=[1, 2] must be a finite number or a list of 3 (one per RGB channel)"),
    (["data.decoder=ffmpeg"], "data.decoder='ffmpeg' is not allowed; choose one of: decord, pyav"),
    (["data.train_jitter_scales=[56,48]"],
     "data.train_jitter_scales=[56, 48] must be [min, max]: integers with 1 <= min <= max"),
    (["data.train_crop_size=64"],
     "data.train_crop_size=64 is larger than the smallest training scale data.train_jitter_scales[0]=48"),
    (["data.train_hflip=no"], "data.train_hflip='no' must be true or false"),
    (["trainer.preempt_signals=[SIGTERM,SIGFOO]"],
     "trainer.preempt_signals: 'SIGFOO' is not a signal that can be caught; use names such as SIGTERM, "
     "SIGUSR1, SIGUSR2"),
    (["trainer.resume={absent}/checkpoint_000000010.pt"],
     "trainer.resume={absent}/checkpoint_000000010.pt does not exist: pass a checkpoint file, "
     "trainer.resume=auto (the newest in the run dir) or trainer.resume=null"),
    (["trainer.init_weights={absent}/k400.pt"], "trainer.init_weights={absent}/k400.pt does not exist"),
    # silently a 1-channel embedding in every block
    (["model.nonlocal.inter_ratio=0"], "model.nonlocal.inter_ratio=0 must be a number > 0 (the embedding has "
     "channels x inter_ratio channels; the paper's is 0.5)"),
    (["model=c2d_nl5", "model.nonlocal.inter_ratio=-1"], "model.nonlocal.inter_ratio=-1 must be a number > 0 "
     "(the embedding has channels x inter_ratio channels; the paper's is 0.5)"),
    # Hydra's own errors: a dozen lines and exit status 1; a typo added with + was accepted
    (["trainer.epoch=2"], "trainer.epoch=2: trainer.epoch is not a config key; did you mean trainer.epochs? "
     "(every key: --cfg job)"),
    (["+trainer.epoch=2"], "+trainer.epoch=2: trainer.epoch is not a config key; did you mean "
     "trainer.epochs? (every key: --cfg job)"),
    (["++model.nonlocal.positon=[]"], "++model.nonlocal.positon=[]: model.nonlocal.positon is not a config "
     "key; did you mean model.nonlocal.positions? (every key: --cfg job)"),
    (["+seed=3"], "+seed=3: seed exists already; set it with seed=3"),
    (["trainer.epochs=[1,"], "trainer.epochs=[1,: cannot be parsed (no viable alternative at input '[1,'); "
     "see https://hydra.cc/docs/advanced/override_grammar/basic/"),
]


@pytest.mark.parametrize(("overrides", "message"), CASES, ids=[c[0][-1] for c in CASES])
def test_bad_config_is_rejected_naming_key_and_allowed_values(overrides, message, tmp_path):
    """In-process, the two checks the apps run first: the command line (group choices, keys, Hydra's
    grammar), then ``validate_config`` on the composed config."""
    absent = tmp_path / "absent"
    over = [f"data.root={absent}", *(o.format(absent=absent) for o in overrides)]
    with pytest.raises(ConfigError) as err:
        check_command_line(over, CONFIGS)
        validate_config(composed(*over))
    assert str(err.value) == message.format(absent=absent)
    assert "\n" not in str(err.value) and not absent.exists()


@pytest.mark.parametrize("case", [0, 5, 8, 16], ids=["group choice", "NL block index", "data.root",
                                                    "trainer.epochs"])
def test_train_py_prints_one_line_before_any_data_is_read(case, tmp_path):
    overrides, message = CASES[case]
    absent = tmp_path / "absent"
    over = [o.format(absent=absent) for o in overrides]
    r = run_app("train.py", f"data.root={absent}", *over, "model.width=8", f"hydra.run.dir={tmp_path}/run",
                timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines == ["error: " + message.format(absent=absent)], r.stderr[-2000:]
    assert not absent.exists()  # the synthetic dataset was not generated: no data was touched
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_group_choice_in_a_sweep_and_in_eval(tmp_path):
    r = run_app("train.py", "-m", "model=c2d,c2d_nl55", f"hydra.sweep.dir={tmp_path}/sweep", timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: model=c2d_nl55 is not allowed; choose one of: c2d, c2d_nl1, c2d_nl10, c2d_nl5, i3d, "
        "i3d_nl1, i3d_nl10, i3d_nl5, i3d_r101, i3d_r101_nl5"]
    assert not (tmp_path / "sweep").exists()
    r = run_app("eval.py", "checkpoint=/nowhere.pt", "data=kinetics", f"hydra.run.dir={tmp_path}/e",
                timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: data=kinetics is not allowed; choose one of: charades, kinetics400, synthetic, "
        "synthetic_charades"]


def test_unknown_keys_exit_2_with_the_closest_key_in_every_app(tmp_path):
    """Each app checks keys against its own config (predict.yaml, export.yaml); keys of a swept group
    choice exist under one of its choices; experiments are still added with +."""
    r = run_app("train.py", "+trainer.epoch=2", "model.width=8", f"hydra.run.dir={tmp_path}/run", timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: +trainer.epoch=2: trainer.epoch is not a config key; did you mean trainer.epochs? (every "
        "key: --cfg job)"]
    assert not (tmp_path / "run").exists()
    r = run_app("predict.py", "chekpoint=x.pt", "video=a.mp4", timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: chekpoint=x.pt: chekpoint is not a config key; did you mean checkpoint? (every key: "
        "--cfg job)"]
    check_command_line(["-m", "optim=sgd,adamw", "optim.betas=[0.9,0.99]"], CONFIGS)
    check_command_line(["+experiment=nl_vs_baseline", "model.width=8", "hydra.run.dir=x"], CONFIGS)
    with pytest.raises(ConfigError, match="model.widht is not a config key; did you mean model.width?"):
        check_command_line(["-m", "model=c2d,i3d", "model.widht=8"], CONFIGS)
