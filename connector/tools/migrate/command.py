"""The `migrate-v1` command line: arguments, checks of the options, the run and its exit status.

Exit status: 0 when the files are written (warnings and placeholders are listed on stderr and in
report.txt); 2 when a source or an option is unusable (one ``error:`` line naming the file or
option and the rule; nothing is written).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING, List, Tuple

from ... import __version__
from .source import MAX_BYTES, MigrationError, show

if TYPE_CHECKING:
    from .plan import Options

# Every `python -m connector` command builds the parser, so add_arguments needs only the light
# imports above; what reads, plans and writes a migration is imported by options() and run()
# (about 15 modules that `serve` would otherwise load on every start).

DESCRIPTION = """\
Turn what a Greengrass V1 device still has into a working set-up for this project.

SOURCE is the core's deployed group, /greengrass/ggc/deployment/group/group.json (read it as root),
or V1 definition versions saved with the AWS CLI:
  aws greengrass get-connector-definition-version     (the ObjectDetection connector, ML Feedback)
  aws greengrass get-function-definition-version      (Lambda functions)
  aws greengrass get-resource-definition-version      (the ML model resource: the model path)
  aws greengrass get-subscription-definition-version  (MQTT topics: the allow-list)
or their `create-*-definition --initial-version` documents. Several SOURCEs combine (the four
definition versions describe one group); a document's kind is recognised from its content. Every
SOURCE is untrusted: a regular file of at most {mib} MiB, JSON only, 32 levels deep at most.
"""
EPILOG = """\
written (fixed names, only under --out; a link is never written through):
  params.yaml      connector parameters for `serve --config` (checked with this project's rules;
                   MLModelDestinationPath = DestinationPath of the ML resource MLModelResourceId
                   names, or --model-path)
  feedback.yaml    ML Feedback parameters for `serve --feedback-config`, when the group has one
  deployment.json  `aws greengrassv2 create-deployment --cli-input-json` document deploying
                   com.example.ObjectDetectionService to --thing-group
  mqtt-allow.txt   the topic filters V1 let user Lambdas (and the replaced connectors) publish to
                   the cloud; one a line, for `serve --mqtt-allow` / GG_MQTT_ALLOW ($-topics never)
  report.txt       what maps and what does not (other connectors, Lambda functions, subscriptions,
                   resources), warnings, placeholders to edit, the next command per target

exit status: 0 written (see the warnings: placeholders may need editing); 2 unusable input or
option (one error line, nothing written)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION.format(mib=MAX_BYTES // (1024 * 1024))
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="group.json or a definition "
                   "version document (JSON)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory to write into (created if missing; not a symbolic link)")
    p.add_argument("--model-path", metavar="DIR",
                   help="the model directory on the new host (absolute), when it moved or when "
                        "the V1 path was the Lambda container's")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a connector parameter (repeatable), e.g. "
                        "LocalInferenceServiceTimeoutSeconds=20")
    p.add_argument("--connector-id", metavar="ID",
                   help="the ObjectDetection connector's Id, when the group has several")
    p.add_argument("--thing-group", metavar="NAME",
                   help="V2 thing group to deploy to (default: a placeholder to edit)")
    p.add_argument("--component-version", default=__version__, metavar="VERSION",
                   help="version of com.example.ObjectDetectionService to deploy (default {}, this "
                        "package's)".format(__version__))
    p.add_argument("--region", help="AWS region of the deployment (default: from the documents)")
    p.add_argument("--account", metavar="ACCOUNT_ID",
                   help="AWS account id of the thing group (default: from the documents)")


def _check(value: str, pattern: str, option: str, what: str) -> str:
    if re.fullmatch(pattern, value) is None:
        raise MigrationError("{} {}: must be {} (pattern {})".format(option, show(value), what,
                                                                     pattern))
    return value


def _param(text: str) -> Tuple[str, str]:
    from ...params import RULES
    name, sep, value = text.partition("=")
    if not sep or name not in RULES:
        raise MigrationError("--param {}: must be NAME=VALUE with NAME one of {}".format(
            show(text), ", ".join(RULES)))
    return name, value


def options(args: argparse.Namespace) -> Options:
    """The checked options; MigrationError naming the first bad one."""
    from .group import REGION_PATTERN
    from .plan import ACCOUNT_PATTERN, THING_GROUP_PATTERN, VERSION_PATTERN, Options
    model = args.model_path
    if model is not None and (not os.path.isabs(model) or "\0" in model):
        raise MigrationError("--model-path {}: must be an absolute path".format(show(model)))
    for value, pattern, option, what in (
            (args.thing_group, THING_GROUP_PATTERN, "--thing-group", "a thing group name"),
            (args.region, REGION_PATTERN, "--region", "an AWS region such as us-west-2"),
            (args.account, ACCOUNT_PATTERN, "--account", "a 12-digit AWS account id"),
            (args.component_version, VERSION_PATTERN, "--component-version",
             "a semantic version such as 1.0.0")):
        if value is not None:
            _check(value, pattern, option, what)
    return Options(model_path=model, params=tuple(_param(p) for p in args.param),
                   connector_id=args.connector_id, thing_group=args.thing_group,
                   component_version=args.component_version, region=args.region,
                   account=args.account)


def run(args: argparse.Namespace) -> int:
    """Read, plan, write, summarise. MigrationError (exit 2 in connector.cli) before any write."""
    from . import render, writer
    from .group import V1Group, add_document
    from .plan import make_plan
    from .source import read_source
    opts = options(args)
    group = V1Group()
    for path in args.sources:
        add_document(group, path, read_source(path))
    plan = make_plan(group, opts)
    writer.prepare(args.out)
    texts = render.files(plan, args.out)
    writer.write(args.out, texts, render.FILES)
    written: List[str] = [n for n in render.FILES if n in texts]
    sys.stdout.write(render.summary(plan, args.out, written))
    for line in plan.warnings + ["edit: " + p for p in plan.placeholders]:
        print("warning: {}".format(line), file=sys.stderr)
    return 0
