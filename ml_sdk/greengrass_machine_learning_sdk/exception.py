"""Exceptions shared by the inference and feedback clients (module name as in AWS's SDK)."""


class GreengrassDependencyException(Exception):
    """Something the call depends on failed, not the service itself: no Greengrass core or
    standalone host to talk to, no function serving the address, a timeout, an unhandled error
    or an IPC refusal (any non-2xx answer)."""
