"""The arbiter thread of one :class:`~.supervisor.WorkerSupervisor`: replacement and reload.

Off every request's path it replaces a worker that was retired or died while idle (with a backoff
while starts keep failing), asks the :class:`~.reloader.ModelWatcher` whether the model directory
changed, and runs each reload in a thread of its own (loading can take minutes, and a crashed
worker must be replaced meanwhile) under a reload gate that the supervisors of one pool share, so
that a reload holds one worker more than the pool, never twice as many.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from ..errors import shorten

log = logging.getLogger("connector.supervision")

RESPAWN_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Arbiter:
    def __init__(self, supervisor: Any, reload_gate: threading.Lock) -> None:
        """:param supervisor: the WorkerSupervisor it serves (its condition, current worker,
            watcher and counters; spawn, adopt, switch_to, retire_if_dead, set_failed)."""
        self.supervisor = supervisor
        self.spawn_failures = 0  # starts that failed in a row (under the supervisor's condition)
        self._gate = reload_gate
        self._reload_reason: Optional[str] = None
        self._reloading = False
        self._thread = threading.Thread(target=self._loop, name="worker-arbiter", daemon=True)
        self._thread.start()

    def request_reload(self, reason: str) -> None:
        with self.supervisor.cond:
            self._reload_reason = reason
            self.supervisor.cond.notify_all()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        sup = self.supervisor
        while True:
            with sup.cond:
                self._wait_for_news()
                if sup.stopping:
                    return
                worker = sup.current
                reason = None
                if not self._reloading:
                    reason, self._reload_reason = self._reload_reason, None
            if worker is not None and not worker.alive():
                sup.retire_if_dead()
            elif worker is None:
                self._respawn()
            else:
                if reason is None and sup.watch_interval_s and not self._reloading:
                    reason = sup.watcher.changed()
                if reason is not None:
                    self._start_reload(reason)

    def _wait_for_news(self) -> None:
        """Under the condition: sleep until something needs doing, or one tick."""
        sup = self.supervisor
        if sup.current is None and self.spawn_failures:
            # back off before trying a failing start again
            sup.cond.wait(RESPAWN_BACKOFF_S[min(self.spawn_failures, len(RESPAWN_BACKOFF_S)) - 1])
            return
        sup.cond.wait_for(lambda: sup.stopping or sup.current is None or not sup.current.alive()
                          or (self._reload_reason is not None and not self._reloading),
                          min(sup.watch_interval_s or 1.0, 1.0))

    # -- replacing ----------------------------------------------------------------------------

    def _respawn(self) -> None:
        sup = self.supervisor
        fingerprint = sup.watcher.now()
        try:
            worker = sup.spawn()
        except Exception as e:  # noqa: BLE001 - an arbiter that died would leave no worker, ever
            with sup.cond:
                self.spawn_failures += 1
            sup.set_failed(str(e))
            log.error("could not start an inference worker (attempt %d): %s", self.spawn_failures,
                      shorten(e))
            return
        if sup.adopt(worker, fingerprint):
            with sup.cond:
                self.spawn_failures = 0

    # -- reloading ----------------------------------------------------------------------------

    def _start_reload(self, reason: str) -> None:
        with self.supervisor.cond:
            self._reloading = True
        threading.Thread(target=self._reload_then_done, args=(reason,), name="worker-reload",
                         daemon=True).start()

    def _reload_then_done(self, reason: str) -> None:
        try:
            with self._gate:
                if not self.supervisor.stopping:
                    self._reload(reason)
        finally:
            with self.supervisor.cond:
                self._reloading = False
                self.supervisor.cond.notify_all()

    def _reload(self, reason: str) -> None:
        sup = self.supervisor
        log.info("reloading the model (%s)", reason)
        fingerprint = sup.watcher.now()
        try:
            worker = sup.spawn()
        except Exception as e:  # noqa: BLE001 - whatever the new version does, the old one serves on
            sup.counters.add("reload_failures")
            sup.last_error = shorten(e)
            sup.watcher.load_failed(fingerprint)
            log.error("reload failed, the previous model keeps serving: %s", shorten(e))
            return
        if sup.switch_to(worker, fingerprint):
            with sup.cond:
                self.spawn_failures = 0
            sup.counters.add("reloads")
            log.info("switched to the reloaded model (worker %d)", worker.pid)
