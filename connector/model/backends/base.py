"""The one small interface every model runtime implements.

Shaped after ONNX Runtime's session: created once per worker (the expensive load), then called
many times with a ready input tensor.
"""
from __future__ import annotations

from typing import List

import numpy as np

from ..contract import ModelIO

try:  # typing.Protocol is 3.8+; runtime code must also import on 3.7 Lambdas
    from typing import Protocol  # novermin
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore


# How many threads a runtime may use for one inference (ONNX Runtime's intra-op pool; DLR's TVM
# pool reads TVM_NUM_THREADS), set in a worker's environment by the pool; unset: the runtime's
# default, one per physical core.
THREADS_ENV = "CONNECTOR_INTRA_OP_THREADS"


class Backend(Protocol):
    name: str  # "dlr" or "onnxruntime"
    device: str  # "cpu" or "gpu": what the runtime really uses, not what was asked for
    io: ModelIO  # the model's inputs and outputs as the artefact declares them

    def run(self, tensor: np.ndarray) -> List[np.ndarray]:
        """Run the model on one prepared input tensor; return its outputs in the model's order."""
        ...

    def close(self) -> None:
        """Release the runtime's resources."""
        ...
