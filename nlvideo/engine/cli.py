"""The command-line shell around a job (``train``, ``evaluate``): argv fixes applied before Hydra
starts, and the mapping of a job's outcome to an exit status.

An entry script is::

    @hydra.main(config_path="configs", config_name="config", version_base="1.3")
    def main(cfg): run_job(train, cfg)

    if __name__ == "__main__":
        prepare_argv(CONFIG_DIR)
        main()
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nlvideo.engine import checkpoint as ckpt_io
from nlvideo.engine import distributed as du
from nlvideo.engine import run_start
from nlvideo.engine.config import ConfigError, check_command_line, script_config_name


def run_model_name(model_name: str, checkpoint: str | None) -> str:
    """The model a run directory is named after (configs/config.yaml's ``hydra.run.dir``,
    ``outputs/<job>/<model>/<time>``): the model ``checkpoint=`` was trained as (eval.py; its config
    is recomposed from the checkpoint after Hydra made the directory), else ``model.name``. A
    checkpoint that cannot be read leaves ``model.name``: the job then refuses it in one line."""
    if checkpoint is None:
        return model_name
    try:
        name = ckpt_io.load_checkpoint(checkpoint)["config"]["model"]["name"]
    except Exception:  # noqa: BLE001 - any unreadable file: the job says why
        return model_name
    return name if isinstance(name, str) and name else model_name


if not OmegaConf.has_resolver("run_model"):
    OmegaConf.register_new_resolver("run_model", run_model_name)


def prepare_argv(config_dir: str | Path, description: str = "", keys: str = "",
                 groups: Sequence[str] | None = None) -> None:
    """Answer ``--help``/``-h``, fix ``sys.argv`` for this rank and reject a bad config-group choice,
    all before Hydra starts. ``groups``: the config groups the script takes (:func:`usage`)."""
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(usage(description, keys, config_dir, groups))
        sys.exit(0)
    sys.argv = nonzero_rank_argv(sys.argv)
    exit_on_bad_group_choice(sys.argv[1:], config_dir)
    if du.env_rank() == 0:
        exit_on_unwritable_run_dir(sys.argv[1:])
        run_start.note_dirs_before_hydra(sys.argv[1:])


def usage(description: str, keys: str, config_dir: str | Path, groups: Sequence[str] | None = None) -> str:
    """The script's description, the config groups it takes with their choices (``groups``; None: every
    group of ``config_dir``), and its main keys (Hydra's own help lists every resolved key of the
    composed config: ``--hydra-help`` and ``--cfg job``)."""
    config_dir = Path(config_dir)
    found = sorted(p for p in config_dir.iterdir() if p.is_dir() and p.name != "hydra"
                   and (groups is None or p.name in groups))
    lines = [description.strip()]
    if found:
        lines += ["", "Config groups (name=choice):"]
    for g in found:
        lines.append(f"  {g.name:<11} " + ", ".join(sorted(p.stem for p in g.glob("*.yaml"))))
    lines += ["", "Main keys (key=value; every key: --cfg job):", keys.strip("\n"), "",
              "Hydra's own options: --hydra-help, --cfg job, -m (sweep), hydra.run.dir=DIR"]
    return "\n".join(lines)


def exit_on_bad_group_choice(argv: list[str], config_dir: str | Path) -> None:
    """``model=xyz``, ``trainer.epoch=2``, an override Hydra cannot parse: one line naming the allowed
    choices or the closest key, exit status 2 (Hydra's error is a dozen lines and exit status 1)."""
    try:
        check_command_line(argv, config_dir, script_config_name(sys.argv[0], config_dir))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def exit_on_unwritable_run_dir(argv: list[str]) -> None:
    """A read-only run dir: one line, exit status 2 (Hydra's error is a traceback)."""
    why = run_start.unwritable_run_dir(argv)
    if why:
        print(f"error: {why}", file=sys.stderr)
        sys.exit(2)


def nonzero_rank_argv(argv: list[str]) -> list[str]:
    """Ranks > 0 of a torchrun/SLURM job must not create Hydra output dirs or log files of their own:
    rank 0's directory is broadcast to them once the process group is up."""
    if du.env_rank() == 0:
        return argv
    ours = ("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging=")
    keep = [a for a in argv if not a.startswith(ours)]
    return keep + ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none"]


NOT_FOR_A_RERUN = ("hydra.mode=", "hydra.run.dir=", "hydra.sweep.", "hydra/launcher=", "hydra.launcher.")


def resume_command(run_dir: str | os.PathLike) -> str:
    """The command that resumes this job: its script and overrides (this job's own, for one job of a
    sweep) with ``hydra.run.dir=<run_dir, absolute>``, shell-quoted. A plain rerun gets a new
    timestamped run dir and starts over, so every resumable stop prints this. Under torchrun it is
    the part after torchrun's own options, which only the launcher knows."""
    from hydra.core.hydra_config import HydraConfig

    overrides = HydraConfig.get().overrides
    kept = [o for o in [*overrides.task, *overrides.hydra] if not o.startswith(NOT_FOR_A_RERUN)]
    args = [sys.argv[0], *kept, f"hydra.run.dir={Path(run_dir).resolve()}"]
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return "torchrun <the same torchrun options> " + shlex.join(args)
    python = shutil.which("python")
    same = python is not None and os.path.realpath(python) == os.path.realpath(sys.executable)
    return shlex.join(["python" if same else sys.executable, *args])


def _resume_hint() -> str:
    """"; to resume from the last checkpoint: <command>" for an interrupted training job."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return f"; to resume from the last checkpoint: {resume_command(HydraConfig.get().runtime.output_dir)}"
    except ValueError:  # Hydra has no config (not run as an app): nothing to rerun
        return ""


def run_job(job: Callable[[DictConfig], int], cfg: DictConfig, resumable: bool = False) -> None:
    """Run ``job(cfg)`` as a command: a ConfigError is one ``error:`` line and exit status 2, an
    interrupt one line and 130 (``resumable``, train.py: with the command that resumes the run), a
    non-zero status from the job exits with it; the process group is always torn down."""
    try:
        status = job(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    except RuntimeError as exc:
        if not du.is_collective_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: a collective with the other processes failed ({first[:200]}); a peer stopped, "
              "died or stalled longer than trainer.dist_timeout_min", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:  # a second Ctrl-C (the first one checkpoints and stops cleanly)
        print(f"interrupted{_resume_hint() if resumable else ''}", file=sys.stderr)
        status = 130
    finally:
        du.cleanup()
    if status == 2:  # refused before any work: leave the run dir as the start found it
        run_start.undo_refused_start()
    if status:
        sys.exit(status)
