"""The fast path's frames: one request frame and one answer frame per call, length-prefixed binary.

The SDK keeps its own copy (``greengrass_machine_learning_sdk/_fast.py``: it must not import this
package); ``tests/ipc/test_fast_path.py`` checks that the two agree byte for byte.

Request (network byte order)::

    magic "GGFP" | version u8 (1) | operation u8 (1: invoke) | token length u16 |
    ARN length u16 | client-context length u32 | payload length u32        (18 bytes)
    token | function ARN (UTF-8) | client context (base64 text, ASCII) | payload

Answer::

    magic "GGFA" | version u8 | call u8 | flags u8 | status u16 | reason length u8 |
    errorType length u8 | function-error length u8 | Retry-After length u8 |
    payload length u32                                                      (17 bytes)
    reason | errorType | function error | Retry-After | payload

``call`` says which call of the V1 exchange the answer stands for (0: the frame itself was
refused, 1: post_work, 2: get_work_result), so the SDK words a refusal exactly as it words the V1
exchange's answer to that call; ``reason`` is the host's HTTP reason phrase for ``status``;
flag 1 (``FLAG_CLOSING``) says the host closes the connection after this answer (the V1
exchange's ``Connection: close``), so the caller does not keep it. A
success is status 200 with the function's result as payload (and its function error, if any); a
refusal carries the V1 exchange's JSON error body ``{"errorMessage", "errorType"}`` as payload.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

REQUEST_MAGIC = b"GGFP"
ANSWER_MAGIC = b"GGFA"
VERSION = 1
OP_INVOKE = 1

REQUEST_HEADER = struct.Struct("!4sBBHHII")
ANSWER_HEADER = struct.Struct("!4sBBBHBBBBI")
FLAG_CLOSING = 1

CALL_FRAME = 0
CALL_POST_WORK = 1
CALL_GET_WORK_RESULT = 2

# The fields a caller names; what the SDK sends is far below them (a 43-character token, an ARN
# of ~80). A longer one is refused from the header, before a byte of it is read. The client
# context's limit is the host's (protocol.MAX_CLIENT_CONTEXT_BYTES), applied by the same check as
# the V1 exchange's once it is read.
MAX_TOKEN_BYTES = 4096
MAX_ARN_BYTES = 4096


class RequestHeader(NamedTuple):
    magic: bytes
    version: int
    operation: int
    token_length: int
    arn_length: int
    context_length: int
    payload_length: int

    @property
    def fields_length(self) -> int:
        """Bytes of the token, ARN and client context, which follow the header."""
        return self.token_length + self.arn_length + self.context_length


class Answer(NamedTuple):
    call: int
    flags: int
    status: int
    reason: str
    error_type: str
    function_error: str
    retry_after: str
    payload: bytes


def parse_request_header(data: bytes) -> RequestHeader:
    """The fixed header of a request frame (`data` is REQUEST_HEADER.size bytes)."""
    return RequestHeader(*REQUEST_HEADER.unpack(data))


def request(token: bytes, function_arn: bytes, client_context: bytes, payload: bytes,
            version: int = VERSION, operation: int = OP_INVOKE) -> bytes:
    """A whole request frame (the SDK's way; tests build odd ones with `version`/`operation`)."""
    head = REQUEST_HEADER.pack(REQUEST_MAGIC, version, operation, len(token), len(function_arn),
                               len(client_context), len(payload))
    return b"".join((head, token, function_arn, client_context, payload))


def answer(call: int, status: int, reason: str, payload: bytes, error_type: str = "",
           function_error: str = "", retry_after: str = "", closing: bool = False) -> bytes:
    """A whole answer frame (the short text fields are cut at 255 bytes of ASCII)."""
    reason_, type_ = _short(reason), _short(error_type)
    error_, retry_ = _short(function_error), _short(retry_after)
    head = ANSWER_HEADER.pack(ANSWER_MAGIC, VERSION, call, FLAG_CLOSING if closing else 0, status,
                              len(reason_), len(type_), len(error_), len(retry_), len(payload))
    return b"".join((head, reason_, type_, error_, retry_, payload))


def parse_answer(data: bytes) -> Answer:
    """An answer frame read whole (tests; the SDK reads the header, then the rest)."""
    magic, _, call, flags, status, *lengths, payload_length = ANSWER_HEADER.unpack_from(data)
    at, texts = ANSWER_HEADER.size, []
    for length in lengths:
        texts.append(data[at:at + length].decode("ascii"))
        at += length
    return Answer(call, flags, status, texts[0], texts[1], texts[2], texts[3],
                  data[at:at + payload_length])


def _short(text: str) -> bytes:
    return text.encode("ascii", "replace")[:255] if text else b""
