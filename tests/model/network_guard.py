"""The start of a child process's script that must make no network attempt: it replaces the
socket entry points with a guard that records every attempt (in ``attempts``) and refuses it,
before anything else is imported."""
import textwrap

GUARD = textwrap.dedent("""
    import json, socket, sys

    attempts = []

    def guard(what):
        def refuse(*args, **kwargs):
            attempts.append({"call": what, "args": repr(args)[:300]})
            raise OSError("network refused by the test guard")
        return refuse

    socket.socket.connect = guard("socket.connect")
    socket.socket.connect_ex = guard("socket.connect_ex")
    socket.create_connection = guard("socket.create_connection")
    socket.getaddrinfo = guard("socket.getaddrinfo")
""")
