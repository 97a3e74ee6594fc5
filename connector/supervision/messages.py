"""What a supervisor and its worker process say to each other, as named types.

The supervisor sends a :class:`Request` and then the image bytes as one raw message (decoding
happens in the worker, so no pixel array crosses the process boundary). The worker answers each
request with an :class:`Answer` or a :class:`Failure`; once, after loading, it says :class:`Ready`
or :class:`LoadFailed`. Errors travel by name (their class name) and message; the supervisor turns
them back into errors with :func:`connector.errors.from_worker`, an explicit list of names.

NamedTuples, because they pickle as plain tuples (the ``multiprocessing`` connection pickles
each message) while both ends read fields by name.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Union


class Request(NamedTuple):
    content_type: Optional[str]
    invocation_id: str


class Ready(NamedTuple):
    backend: str  # "dlr" or "onnxruntime"
    device: str  # what the runtime really uses: "cpu" or "gpu"
    max_pixels: int  # the decoder's limit, lowered to what the memory limit leaves room for
    loaded_kb: int  # resident memory once the model is loaded and warmed up


class LoadFailed(NamedTuple):
    error: str  # the error's class name (connector.errors)
    message: str


class Answer(NamedTuple):
    text: str  # the prediction document
    timings: Dict[str, float]  # "decode" and "inference" seconds, measured in the worker


class Failure(NamedTuple):
    error: str  # the error's class name (connector.errors.FROM_WORKER)
    message: str


Reply = Union[Answer, Failure]
LoadOutcome = Union[Ready, LoadFailed]
