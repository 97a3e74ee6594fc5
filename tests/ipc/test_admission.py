"""The work board's admission hook: a function judges each post_work from the principal the host
authenticated, before anything is queued, and the caller gets the hook's 4xx at once."""
import http.client
import json

import pytest

from connector.ipc import IPCHost, IPCError, protocol
from connector.ipc.invocations import NotAdmitted

ARN = "arn:aws:lambda:us-east-1:123456789012:function:judged"
OTHER = "arn:aws:lambda:us-east-1:123456789012:function:other"


@pytest.fixture()
def host():
    h = IPCHost(port=0, write_client_file=False, result_timeout_s=5).start()
    yield h
    h.shutdown(0)


def judged_by(host, verdict):
    """Register ARN with a hook that records who posted and applies `verdict`."""
    seen = []

    def admit(principal, client_context, payload):
        seen.append((principal.name, principal.function_arn, client_context, payload))
        verdict(principal, client_context, payload)

    host.register_function(ARN, admit=admit)
    return seen


def refuse_callers(principal, _context, payload):
    if principal.function_arn is None:
        raise NotAdmitted("callers may not post here (rule: functions only)", 403, "CallersRefused")
    if len(payload) > 4:
        raise NotAdmitted("at most 4 bytes (rule: tiny)", 413, "TooBig")


def raw_post(host, token, context):
    conn = http.client.HTTPConnection(host.connect_host, host.port, timeout=5)
    try:
        conn.request("POST", protocol.function_path(ARN), body=b"x", headers={
            "Authorization": token, protocol.HEADER_CLIENT_CONTEXT: context,
            protocol.HEADER_INVOCATION_TYPE: protocol.INVOCATION_EVENT})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_hook_sees_the_authenticated_principal_not_what_the_request_claims(host):
    seen = judged_by(host, refuse_callers)
    host.register_function(OTHER)
    # The caller claims to be the function in its client context; the hook sees a caller.
    forged = protocol.encode_client_context({"source": OTHER})
    status, body = raw_post(host, host.token, forged)
    assert status == 403
    assert body == {"errorMessage": "callers may not post here (rule: functions only)",
                    "errorType": "CallersRefused"}
    assert seen[-1][:3] == ("caller", None, forged)
    assert host.board.queue_depth(ARN) == 0  # nothing was queued
    # The same request with the function's own token is admitted.
    client = host.client(timeout=5, function_arn=OTHER)
    client.post_work(ARN, b"ok", forged, protocol.INVOCATION_EVENT)
    assert seen[-1][:2] == ("function " + OTHER, OTHER) and seen[-1][3] == b"ok"
    assert host.board.queue_depth(ARN) == 1


def test_the_hooks_status_reaches_the_client_and_the_host_keeps_serving(host):
    judged_by(host, refuse_callers)
    host.register_function(OTHER)
    client = host.client(timeout=5, function_arn=OTHER)
    with pytest.raises(IPCError) as refused:
        client.post_work(ARN, b"too large", "", protocol.INVOCATION_EVENT)
    assert (refused.value.status, refused.value.error_type) == (413, "TooBig")
    assert "rule: tiny" in str(refused.value)
    client.post_work(ARN, b"ok", "", protocol.INVOCATION_EVENT)  # the next one goes through
    assert host.board.queue_depth(ARN) == 1


def test_an_arn_nobody_serves_is_404_before_the_hook_runs(host):
    seen = judged_by(host, refuse_callers)
    host.unregister_function(ARN)
    with pytest.raises(IPCError) as refused:
        host.client(timeout=5).post_work(ARN, b"x", "", protocol.INVOCATION_EVENT)
    assert refused.value.status == 404 and not seen


def test_a_failing_hook_costs_one_request_not_the_host(host):
    def broken(principal, context, payload):
        raise KeyError("a bug in the hook")

    judged_by(host, broken)
    with pytest.raises(IPCError) as failed:
        host.client(timeout=5).post_work(ARN, b"x", "", protocol.INVOCATION_EVENT)
    assert failed.value.status == 500
    host.register_function(OTHER)
    host.client(timeout=5).post_work(OTHER, b"x", "", protocol.INVOCATION_EVENT)
    assert host.board.queue_depth(OTHER) == 1


def test_functions_without_a_hook_are_unchanged(host):
    host.register_function(OTHER)
    host.client(timeout=5).post_work(OTHER, b"anything at all", "", protocol.INVOCATION_EVENT)
    assert host.board.queue_depth(OTHER) == 1
