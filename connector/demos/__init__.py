"""The demo detectors shipped inside the package (trained by scripts/train_demo_detectors.py)."""
from __future__ import annotations

import os
import platform
from typing import Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = "demo-ssd"
# A Neo demo is compiled for one CPU: "<name>-neo" for x86_64, "<name>-neo-<arch>" for the others.
NEO_ARCHES = ("aarch64", "armv7")


def this_arch(machine: Optional[str] = None) -> str:
    """The Neo demos' name for this CPU (platform.machine() spelled as the demos are)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    if machine.startswith("arm"):
        return "armv7"
    return {"amd64": "x86_64"}.get(machine, machine)


def model_arch(name: str) -> Optional[str]:
    """The CPU a bundled model was compiled for; None for ONNX models (any CPU)."""
    for arch in NEO_ARCHES:
        if name.endswith("-neo-" + arch):
            return arch
    return "x86_64" if name.endswith("-neo") else None


def _all_models() -> Dict[str, str]:
    return {name: os.path.join(HERE, name) for name in sorted(os.listdir(HERE))
            if os.path.isdir(os.path.join(HERE, name)) and not name.startswith(("_", "."))}


def bundled_models(machine: Optional[str] = None) -> Dict[str, str]:
    """name -> absolute directory of every bundled model this machine can run, sorted by name."""
    arch = this_arch(machine)
    return {name: path for name, path in _all_models().items() if model_arch(name) in (None, arch)}


def model_path(name: str) -> str:
    models = bundled_models()
    if name not in models:
        arch = model_arch(name)
        if name in _all_models() and arch:
            raise KeyError("bundled model {!r} is compiled for {}, and this machine is {}; bundled "
                           "here: {}".format(name, arch, this_arch(), ", ".join(models)))
        raise KeyError("no bundled model {!r}; bundled: {}".format(name, ", ".join(models) or "none"))
    return models[name]
