"""Make the registry's CUDA-built torchvision importable next to a CPU-only torch.

Why this exists: the torchvision 0.28.0 wheel on PyPI is built against CUDA. Beside the
``2.13.0+cpu`` torch its ``_C`` extension cannot be loaded, yet
``torchvision/_meta_registrations.py`` still registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms``; with no such operators ``import torchvision`` dies with
``RuntimeError: operator torchvision::nms does not exist``. Declaring the two operator schemas
before torchvision is imported is enough for its pure-Python parts (``transforms.v2``, ``models``)
to work. The detection ops themselves stay unavailable, which nlvideo never uses.

pytorchvideo 0.1.5 also imports ``torchvision.transforms.functional_tensor``, a module torchvision
renamed to ``_functional_tensor``; we alias the old name.

On a normal install (GPU machines, or a matching CPU torchvision) the extension loads and
:func:`patch_torchvision` only adds the alias.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def torchvision_extension_loads() -> bool:
    """Whether torchvision's compiled ``_C`` extension can be loaded by this torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = package_dir / f"_C{suffix}"
        if candidate.exists():
            try:
                torch.ops.load_library(str(candidate))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def patch_torchvision() -> bool:
    """Prepare ``import torchvision``; returns True when the op schemas had to be declared.

    Idempotent, and a no-op for the schemas when torchvision is already imported or its
    extension loads.
    """
    global _library
    declared = False
    if "torchvision" not in sys.modules and _library is None and not torchvision_extension_loads():
        _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - schema only
        for schema in _SCHEMAS.values():
            _library.define(schema)
        declared = True
    if "torchvision.transforms.functional_tensor" not in sys.modules:
        from torchvision.transforms import _functional_tensor

        sys.modules["torchvision.transforms.functional_tensor"] = _functional_tensor
    return declared
