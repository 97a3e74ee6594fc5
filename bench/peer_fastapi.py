#!/usr/bin/env python3
"""The peer for bench/perf.py: the same work as the service's worker, in a minimal FastAPI app.

``python bench/peer_fastapi.py MODEL_DIR PORT [--device cpu|gpu]``: uvicorn on 127.0.0.1:PORT,
``POST /infer`` with the image bytes as the body and its type as Content-Type answers the very
text ``Engine.infer_text`` gives (so answers compare byte for byte). It loads the model with our
Engine, whose ONNX Runtime session has thread spinning off, so the comparison is one of serving
paths, not of runtime settings. What it lacks, on purpose: isolation (the model runs in the web
server's process), deadlines, a memory limit, authentication. Dev-only: needs fastapi and uvicorn.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi import FastAPI, Request, Response  # noqa: E402
import uvicorn  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

from connector.model.engine import Engine  # noqa: E402
from connector.errors import ConnectorError  # noqa: E402


def build_app(engine: Engine) -> FastAPI:
    app = FastAPI()
    lock = threading.Lock()  # one session, one inference at a time, as a plain script would do

    @app.post("/infer")
    async def infer_raw(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type")

        def run() -> str:
            with lock:
                return engine.infer_text(body, content_type)

        try:
            text = await run_in_threadpool(run)
        except ConnectorError as e:
            return Response(str(e), status_code=400, media_type="text/plain")
        return Response(text, media_type="application/json")

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("port", type=int)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    args = parser.parse_args()
    engine = Engine.from_model_dir(args.model_dir, args.device)
    engine.warm_up()
    # Keep-alive as long as a slow model's interleaved rounds can leave a connection idle
    # (uvicorn closes idle ones after 5 s by default).
    uvicorn.run(build_app(engine), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, timeout_keep_alive=600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
