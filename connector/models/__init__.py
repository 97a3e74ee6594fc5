"""The demo detectors shipped inside the package (trained by scripts/train_demo_detectors.py)."""
from __future__ import annotations

import os
from typing import Dict

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = "demo-ssd"


def bundled_models() -> Dict[str, str]:
    """name -> absolute directory of every bundled model, sorted by name."""
    return {name: os.path.join(HERE, name) for name in sorted(os.listdir(HERE))
            if os.path.isdir(os.path.join(HERE, name)) and not name.startswith(("_", "."))}


def model_path(name: str) -> str:
    models = bundled_models()
    if name not in models:
        raise KeyError("no bundled model {!r}; bundled: {}".format(name, ", ".join(models) or "none"))
    return models[name]
