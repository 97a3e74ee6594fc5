"""Command line: `python -m connector models|infer|check-model|doctor|serve|host|attach|migrate-v1 ...`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from . import __version__
from .errors import ConnectorError
from .ipc.host import DEFAULT_MAX_BODY_BYTES
from .logs import configure_logging
from .demos import DEFAULT_MODEL, bundled_models, model_path

log = logging.getLogger("connector.cli")


def cmd_models(args: argparse.Namespace) -> int:
    for name, path in bundled_models().items():
        print(name, path)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `doctor` and `models` must run where NumPy/OpenCV are missing.
    import cv2

    from .model import imaging, postprocess
    from .model.engine import Engine
    from .tools.draw import DEFAULT_MIN_SCORE, annotate, drawn_summary

    model_dir = args.model_dir or model_path(DEFAULT_MODEL)
    try:
        engine = Engine.from_model_dir(model_dir, device=args.device)
    except ConnectorError as e:
        print("error: {}".format(e), file=sys.stderr)
        return 2
    if args.draw:
        os.makedirs(args.draw, exist_ok=True)
    failed = 0
    for path in args.images:
        try:
            with open(path, "rb") as f:
                data = f.read()
            bgr = imaging.decode_bgr(data, engine.max_pixels)
            predictions = engine.detect(bgr)
            if args.draw:
                out = os.path.join(args.draw, os.path.basename(path))
                # Encode by our own extension choice so a misnamed file still gets written.
                ext = ".png" if out.lower().endswith(".png") else ".jpg"
                ok, buf = cv2.imencode(ext, annotate(bgr, predictions, engine.model.labels, DEFAULT_MIN_SCORE))
                with open(os.path.splitext(out)[0] + ext, "wb") as f:
                    f.write(buf.tobytes())
                # stderr: stdout stays one JSON document per image.
                print("{}: {}".format(path, drawn_summary(predictions, DEFAULT_MIN_SCORE)), file=sys.stderr)
            line = {"image": path, "prediction": predictions}
        except (ConnectorError, OSError) as e:
            failed += 1
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            print("error: {}: {}".format(path, reason), file=sys.stderr)
            line = {"image": path, "error": reason}
        print(postprocess.render(line), flush=True)
    return 1 if failed else 0


def cmd_check_model(args: argparse.Namespace) -> int:
    from .tools.check_model import main as check_main
    return check_main(args.model_dir, args.device, args.runs)


def _mqtt(args: argparse.Namespace) -> "Optional[object]":
    from .standalone.ggrouter.settings import MqttSettings
    return MqttSettings.from_options(args.mqtt_url, args.mqtt_client_id, args.mqtt_ca, args.mqtt_cert,
                                     args.mqtt_key, allow=args.mqtt_allow)


def cmd_serve(args: argparse.Namespace) -> int:
    from .standalone.serve import serve
    return serve(args.config, args.port, args.bind, max_body_bytes=args.max_body_bytes,
                 feedback_config=args.feedback_config, mqtt=_mqtt(args),
                 client_file_group=args.client_file_group, fast_path=args.fast_path)


def cmd_host(args: argparse.Namespace) -> int:
    from .standalone.serve import host_only
    return host_only(args.port, args.bind, max_body_bytes=args.max_body_bytes, mqtt=_mqtt(args),
                     functions=args.function, name=args.name,
                     client_file_group=args.client_file_group, fast_path=args.fast_path)


def cmd_feedback(args: argparse.Namespace) -> int:
    from .standalone.attach import attach_feedback
    return attach_feedback(args.config, function_token_file=args.function_token_file,
                           host_name=args.host_name)


def cmd_attach(args: argparse.Namespace) -> int:
    from .standalone.attach import attach
    return attach(args.config, function_token_file=args.function_token_file,
                  host_name=args.host_name)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .tools.doctor import run
    return run(args.model_dir, args.config)


def cmd_migrate_v1(args: argparse.Namespace) -> int:
    from .tools.migrate.command import run
    return run(args)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="YAML/JSON file of connector parameters (environment variables win)")


def _add_listen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="TCP port (default $GG_DAEMON_PORT, else 8000)")
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (default loopback; the token is the only guard)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                   help="refuse request bodies larger than N bytes with 413, unread "
                        "(default {} = 16 MiB)".format(DEFAULT_MAX_BODY_BYTES))
    p.add_argument("--client-file-group", metavar="GROUP",
                   help="let this group read the client file (the callers' token); default: "
                        "only this user")
    p.add_argument("--no-fast-path", dest="fast_path", action="store_false",
                   help="offer only the Greengrass V1 exchange: no Unix socket beside the client "
                        "file, so the bundled SDK uses the V1 exchange too")


def _add_mqtt(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MQTT (the host's GGRouter forwards Lambda publishes to this broker)")
    g.add_argument("--mqtt-url", metavar="URL",
                   help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (default $GG_MQTT_URL; none: "
                        "MQTT publishes are refused)")
    g.add_argument("--mqtt-client-id", metavar="ID", help="MQTT client id (default $GG_MQTT_CLIENT_ID, "
                   "else greengrass-ml-<hostname>-<pid>)")
    g.add_argument("--mqtt-ca", metavar="FILE", help="CA certificate(s) for TLS (default $GG_MQTT_CA_FILE)")
    g.add_argument("--mqtt-cert", metavar="FILE",
                   help="client certificate, e.g. an AWS IoT device certificate ($GG_MQTT_CERT_FILE)")
    g.add_argument("--mqtt-key", metavar="FILE", help="its private key ($GG_MQTT_KEY_FILE)")
    g.add_argument("--mqtt-allow", action="append", default=[], metavar="FILTER",
                   help="an MQTT topic filter (+ and # wildcards) callers and attached functions may "
                        "publish to through GGRouter (repeatable; added to the comma-separated "
                        "$GG_MQTT_ALLOW); default none. $ topics never")


def _add_function_token(p: argparse.ArgumentParser) -> None:
    p.add_argument("--function-token-file", metavar="FILE",
                   help="file holding this function's token (default: $AWS_CONTAINER_AUTHORIZATION_"
                        "TOKEN, else the token `host --function` wrote)")
    p.add_argument("--host-name", metavar="NAME",
                   help="the host's entry in the client file (default: the only running one)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive whole number, got {!r}".format(text))
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m connector",
                                     description="Edge object-detection inference service.")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the bundled models: <name> <absolute path>")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("infer", help="detect objects in image files; one JSON line per image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model-dir", help="model directory (default: the bundled {})".format(DEFAULT_MODEL))
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--draw", metavar="OUTDIR", help="write annotated copies of the images here")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("check-model", help="check a model directory before deploying it: what "
                       "is recognised, the input contract, one inference, time per inference")
    p.add_argument("model_dir", metavar="DIR")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--runs", type=_positive_int, default=10, metavar="N",
                   help="inferences to time (default 10)")
    p.set_defaults(func=cmd_check_model)

    p = sub.add_parser("doctor", help="can the service run here? platform, packages, runtimes, "
                       "system libraries and their symbol versions, the model directory")
    p.add_argument("--model-dir", metavar="DIR", help="also check this model directory")
    _add_config(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("serve", help="run the local inference service (IPC host + connector)")
    _add_config(p)
    _add_listen(p)
    p.add_argument("--feedback-config", metavar="FILE",
                   help="YAML/JSON file of ML Feedback parameters (FeedbackConfigurationMap, "
                        "RequestLimit, FeedbackSpool...): also run the feedback service")
    _add_mqtt(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("host", help="run only the Greengrass-compatible IPC host")
    _add_listen(p)
    _add_mqtt(p)
    p.add_argument("--function", action="append", default=[], metavar="ARN",
                   help="a function that may attach (repeatable); its own token goes to the 0600 "
                        "function-token file beside the client file, where `attach` and `feedback` "
                        "find it")
    p.add_argument("--name", default="ipc-host",
                   help="this host's entry in the client file (default ipc-host)")
    p.set_defaults(func=cmd_host)

    p = sub.add_parser("attach", help="run only the connector, polling a Greengrass core or host")
    _add_config(p)
    _add_function_token(p)
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("feedback", help="run only the ML Feedback service, polling a Greengrass core or host")
    p.add_argument("--config", metavar="FILE",
                   help="YAML/JSON file of ML Feedback parameters (environment variables win)")
    _add_function_token(p)
    p.set_defaults(func=cmd_feedback)

    from .tools.migrate.command import add_arguments as migrate_arguments
    p = sub.add_parser("migrate-v1", help="turn a Greengrass V1 group (the core's group.json or "
                       "saved definition versions) into params.yaml, a V2 deployment, the MQTT "
                       "allow-list and a report")
    migrate_arguments(p)
    p.set_defaults(func=cmd_migrate_v1)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("connector", logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except ConnectorError as e:  # start-up errors: one clear line, no traceback
        print("error: {}".format(e), file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a package the command needs is missing: say which, and how
        from .tools.doctor import install_hint
        hint = install_hint(e.name)
        if hint is None:
            raise
        print("error: `{}` needs the Python module {}, not installed for {}: {}; "
              "`python -m connector doctor` checks everything the service needs"
              .format(args.command, e.name, sys.executable, hint), file=sys.stderr)
        return 2
