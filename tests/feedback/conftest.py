import json
import threading

import pytest

from connector.ipc import IPCHost, run_lambda
from connector.ipc.protocol import GGROUTER_ARN


@pytest.fixture()
def router():
    """A host whose GGRouter records (topic, document) instead of forwarding to a broker."""
    host = IPCHost(port=0, write_client_file=False).start()
    published = []
    stop = threading.Event()

    def handler(event, context):
        published.append((context.client_context.custom["subject"], json.loads(event)))

    host.register_function(GGROUTER_ARN)
    thread = threading.Thread(target=run_lambda,
                              args=(GGROUTER_ARN, handler, host.client(function_arn=GGROUTER_ARN)),
                              kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    yield host, published
    stop.set()
    thread.join(5)
    host.shutdown(0)
