"""Config validation on composed configs (in-process; the Hydra app wraps the same function)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nlvideo.engine.config import ConfigError, validate_config

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_defaults_and_paper_recipes_are_valid(tmp_path):
    validate_config(composed())
    validate_config(composed("model=i3d_nl5", "clip=32x2", "optim=paper_kinetics",
                             "trainer.max_iters=400000"))
    validate_config(composed("data=charades", f"data.root={tmp_path}", "optim=paper_charades",
                             "trainer.amp=bf16"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-0.1"], r"optim.lr=-0.1 must be a finite number > 0"),
        (["optim.schedule=poly"], r"optim.schedule='poly' is not allowed; choose one of: step, cosine"),
        (["data.num_frames=3"], r"data.num_frames=3 does not fit model.input_variant=8x8"),
        (["trainer.amp=fp8"], r"trainer.amp='fp8' is not allowed; choose one of: auto, off, bf16, fp16"),
        (["trainer.amp=fp16", "trainer.device=cpu"], r"trainer.amp=fp16 needs CUDA"),
        (["data=kinetics400"], r"data.root is required for data=kinetics400: pass data.root="),
        (["trainer.progress=fancy"], r"trainer.progress='fancy' is not allowed"),
        (["trainer.checkpoint.keep_last=0"], r"trainer.checkpoint.keep_last=0 must be an integer >= 1"),
        (["trainer.cpu_threads=0"], r"trainer.cpu_threads=0 must be null or an integer >= 1"),
        (["trainer.cpu_threads=two"], r"trainer.cpu_threads='two' must be null"),
    ],
)
def test_invalid_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(composed(*overrides))
