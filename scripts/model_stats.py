"""Parameters and multiply-adds of every shipped model config, next to the paper's published figures.

python scripts/model_stats.py            # Markdown table, 400 classes (Kinetics)
"""

from __future__ import annotations

import argparse

import nlvideo  # noqa: F401
from nlvideo.factory import create_model
from nlvideo.models.stats import count_macs, count_params

MODELS = ["c2d", "c2d_nl1", "c2d_nl5", "c2d_nl10", "i3d", "i3d_nl1", "i3d_nl5", "i3d_nl10"]
# paper.md: parameter counts the paper / reference code / PyTorchVideo give for R50 with 400 classes.
PAPER_PARAMS = {"c2d": 24_327_632, "c2d_nl5": 31_686_096, "i3d": 28_043_472, "i3d_nl5": 35_401_936}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--models", nargs="*", default=MODELS)
    args = parser.parse_args()
    print("| model | #NL | params | paper params | GMACs 8x224² (8x8) | GMACs 32x224² (32x2) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        macs = {}
        for clip, frames in (("8x8", 8), ("32x2", 32)):
            model = create_model(name, args.num_classes, input_variant=clip)
            macs[clip] = count_macs(model, (1, 3, frames, 224, 224)) / 1e9
        paper = PAPER_PARAMS.get(name)
        check = "—" if paper is None else f"{paper:,} {'✓' if paper == count_params(model) else '✗'}"
        print(
            f"| {name} | {model.num_nonlocal} | {count_params(model):,} | {check} "
            f"| {macs['8x8']:.1f} | {macs['32x2']:.1f} |"
        )


if __name__ == "__main__":
    main()
