"""Real servers for the feedback tests: Debian's mosquitto and moto's S3 server with signature checks.

* :class:`Broker` runs ``mosquitto`` on a free loopback port (persistence on, so a subscriber's
  session and its queued messages survive a broker restart, as with a real broker) and can be
  stopped and started again on the same port.
* :class:`Subscriber` is a paho client with a persistent session (clean_session False, QoS 1)
  that records every message of ``feedback/#``.
* :class:`S3Server` is moto's ThreadedMotoServer with ``INITIAL_NO_AUTH_ACTION_COUNT``: the first
  three requests create an IAM user, its policy and its access key; every later request must be
  signed with that key's secret (a wrong one gets SignatureDoesNotMatch). Its state lives in this
  process, so stopping and restarting the server keeps the buckets, as a real outage would.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

# Must be set before moto.settings is imported (it reads the variable once).
NO_AUTH_ACTIONS = 3
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(NO_AUTH_ACTIONS)

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
# Started as root, mosquitto drops to the user "mosquitto", which cannot read the test's 0700
# temporary directories; stay the user we are (the option is ignored when not root).
SAME_USER = "user {}\n".format(getpass.getuser())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.02)
    raise AssertionError("port {} did not go {} within {} s".format(port, "up" if up else "down", timeout))


class Broker:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text("listener {} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             "persistence_location {}/\nautosave_interval 1\n{}".format(
                                 self.port, directory, SAME_USER))
        self.proc: Optional[subprocess.Popen] = None
        self.log = open(directory / "mosquitto.log", "ab")

    @property
    def url(self) -> str:
        return "mqtt://127.0.0.1:{}".format(self.port)

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log, stderr=self.log)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
        wait_port(self.port, up=False)

    def close(self) -> None:
        self.stop()
        self.log.close()


class Subscriber:
    def __init__(self, broker: Broker, client_id: str = "feedback-test-subscriber") -> None:
        import paho.mqtt.client as mqtt
        self.messages: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("feedback/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._lock:
            self.messages.append({"topic": message.topic, "payload": json.loads(message.payload)})

    def on(self, topic: str) -> List[Dict[str, Any]]:
        with self._lock:
            return [m["payload"] for m in self.messages if m["topic"] == topic]

    def statuses(self) -> Dict[str, List[Dict[str, Any]]]:
        by_id: Dict[str, List[Dict[str, Any]]] = {}
        for payload in self.on("feedback/message/status"):
            by_id.setdefault(payload["id"], []).append(payload["response"])
        return by_id

    def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "messages") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.05)
        raise AssertionError("timed out waiting for {}; got {}".format(what, self.messages))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class S3Server:
    def __init__(self) -> None:
        from moto import settings
        try:
            from moto.core.authorization import ActionAuthenticatorMixin
        except ImportError:  # moto 4 (the last for Python 3.7)
            from moto.core.responses import ActionAuthenticatorMixin
        from moto.server import ThreadedMotoServer

        settings.INITIAL_NO_AUTH_ACTION_COUNT = NO_AUTH_ACTIONS  # in case moto was imported earlier
        ActionAuthenticatorMixin.request_count = 0
        self._server_class = ThreadedMotoServer
        self.port = free_port()
        self.server: Any = None
        self.start()
        import boto3
        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        user = "feedback-{}".format(uuid.uuid4().hex[:8])  # moto's state is per process, not per server
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    @property
    def url(self) -> str:
        return "http://127.0.0.1:{}".format(self.port)

    def start(self) -> None:
        self.server = self._server_class(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        wait_port(self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        wait_port(self.port, up=False)

    def client(self, secret: Optional[str] = None) -> Any:
        import boto3
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=secret or self.secret_key)

    def env(self, secret: Optional[str] = None) -> Dict[str, str]:
        """What a process needs to reach this server through boto3's standard chain."""
        return {"AWS_ENDPOINT_URL_S3": self.url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": secret or self.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def objects(self, bucket: str) -> List[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))
