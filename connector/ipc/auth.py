"""Who may do what on the host (SPEC section 4, "Who may do what"): tokens and principals.

* **callers** hold the callers' token (the client file carries it); they may post work to any
  served function and fetch the result of work *they* posted (an invocation belongs to the
  principal that posted it; for anybody else it does not exist), nothing else;
* **each function** has its own token. Only that token may take the function's work (get_work),
  answer it (post_work_result, post_handler_err) or report its initialization; a function may
  also call other functions, as a caller, with it.

Tokens are looked up by their SHA-256 digest: a dict lookup on the token itself would compare the
given bytes with stored ones, whose timing says how much of a guess was right.
"""
from __future__ import annotations

import hashlib
import secrets
from typing import Dict, Optional


class Principal(object):
    """Who made a request: a caller (the callers' token) or the function a token belongs to."""

    __slots__ = ("name", "function_arn")

    def __init__(self, name: str, function_arn: Optional[str] = None) -> None:
        self.name, self.function_arn = name, function_arn

    def serves(self, function_arn: str) -> bool:
        return self.function_arn == function_arn

    def __repr__(self) -> str:
        return "Principal({!r})".format(self.name)


CALLER = Principal("caller")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Credentials:
    """The callers' token and one token per function, and the principal each stands for."""

    def __init__(self, callers_token: str) -> None:
        self.callers_token = callers_token
        self._principals: Dict[bytes, Principal] = {_digest(callers_token): CALLER}
        self._function_tokens: Dict[str, str] = {}

    def principal(self, token: str) -> Optional[Principal]:
        """Who holds `token`, None for nobody."""
        return self._principals.get(_digest(token))

    def function_token(self, function_arn: str) -> Optional[str]:
        return self._function_tokens.get(function_arn)

    def function_tokens(self) -> Dict[str, str]:
        return dict(self._function_tokens)

    def give(self, function_arn: str, token: Optional[str] = None) -> str:
        """The token of `function_arn`: `token`, else the one it has, else a fresh one. Every
        function's token differs from the callers' and from every other function's."""
        old = self._function_tokens.get(function_arn)
        token = token or old or new_token()
        digest = _digest(token)
        if token != old:
            if digest in self._principals:
                raise ValueError("every function needs its own token, distinct from the callers'")
            if old is not None:
                self._principals.pop(_digest(old), None)
        self._function_tokens[function_arn] = token
        self._principals[digest] = Principal("function " + function_arn, function_arn)
        return token
