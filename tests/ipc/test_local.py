"""BoardClient: run_lambda served from the host's own board, with IPCClient's outcomes."""
import threading

import pytest

from connector.ipc import IPCError, run_lambda
from connector.ipc.local import BoardClient
from connector.ipc.workboard import WorkBoard

ARN = "arn:aws:lambda:us-east-1:123456789012:function:local-test"


def test_results_and_handler_errors_reach_the_caller():
    board = WorkBoard(result_timeout_s=10)
    board.register(ARN)
    client = BoardClient(board)
    stop = threading.Event()

    def handler(event, context):
        if event == b"boom":
            raise ValueError("no boom here")
        return {"echo": event.decode()}

    loop = threading.Thread(target=run_lambda, args=(ARN, handler, client),
                            kwargs={"stop_event": stop, "concurrency": 2})
    loop.start()
    try:
        ok = board.submit(ARN, b"hello", "", "RequestResponse")
        bad = board.submit(ARN, b"boom", "", "RequestResponse")
        answered = board.wait_result(ARN, ok.invocation_id)
        failed = board.wait_result(ARN, bad.invocation_id)
    finally:
        stop.set()
        loop.join(10)
    assert not loop.is_alive()  # the interrupt ended both long polls
    assert answered.function_error is None and b'"echo": "hello"' in answered.result
    assert failed.function_error == "Handled" and b"no boom here" in failed.result


def test_refusals_are_ipc_errors():
    board = WorkBoard()
    board.register(ARN)
    client = BoardClient(board)
    with pytest.raises(IPCError) as e:
        client.post_work_result(ARN, "no-such-invocation", b"{}")
    assert e.value.status == 409
    board.start_draining()
    with pytest.raises(IPCError, match="shutting down"):
        client.get_work(ARN)
