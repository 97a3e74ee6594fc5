"""Greengrass V2, checked as far as it can be without a nucleus.

* The request documents (manifests/greengrass-v2/deployment.json for `aws greengrassv2
  create-deployment`, the recipe as `create-component-version --inline-recipe`) validate offline
  against botocore's greengrassv2 service model, enum values included.
* The recipe's lifecycle runs for real: `interpolate` below does what the nucleus does to a
  lifecycle (KernelConfigResolver in aws-greengrass-nucleus, and the recipe reference's "Recipe
  variables": {configuration:/pointer} with value nodes as text, null as "null", objects as compact
  JSON, a missing node left as written; {artifacts:path}, {artifacts:decompressedPath} (a ZIP
  unpacks into a folder named like the archive), {work:path}, {kernel:rootPath}, {iot:thingName};
  <dependency>:<namespace>:<key> only for direct dependencies; an unknown namespace is left as
  written). A fake kernel root holds the artifacts, Install and Run run with `sh -c` as the nucleus
  runs them, the service answers the SDK through the client file Run writes, and Shutdown stops it.

Install runs with the recipe's Install=package configuration: a venv of this Python with the
project's wheel (built here, offline), the dependencies from this test environment's
site-packages (GG_ML_SITE_PACKAGES). The default, Install=script, runs scripts/install/ (apt,
PyPI: minutes, and it changes the machine), which tests/deploy/test_install_scripts.py and the ARM
chroot runs cover; Run and Shutdown are the same in both.
"""
from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set

import numpy as np
import pytest
import yaml

from connector.tools.deploy import outer_memory_kb
from connector.ipc import clientfile
from connector.params import parse_parameters
from tests.service_process import ROOT, healthz, scaled

sys.path.insert(0, str(ROOT / "ml_sdk"))
sys.path.insert(0, str(ROOT / "scripts"))
import greengrass_machine_learning_sdk as ml  # noqa: E402
import shapes_dataset as sd  # noqa: E402

V2 = ROOT / "manifests" / "greengrass-v2"
RECIPE = V2 / "standalone-component-recipe.yaml"
DEPLOYMENT = V2 / "deployment.json"
COMPONENT = "com.example.ObjectDetectionService"
LIFECYCLE_STEPS = {"Setenv", "Bootstrap", "Install", "Run", "Startup", "Shutdown", "Recover"}
STEP_KEYS = {"Script", "RequiresPrivilege", "Skipif", "Timeout", "Setenv"}

# The nucleus's two placeholder forms (KernelConfigResolver).
SAME = re.compile(r"\{([.\w]+):([^:}]+)}")
CROSS = re.compile(r"\{([.\w]+):([.\w]+):([^:}]+)}")


class Nucleus:
    """What one core knows when it interpolates a component's lifecycle."""

    def __init__(self, root: Path, thing: str, configs: Dict[str, Dict[str, Any]],
                 versions: Dict[str, str]) -> None:
        self.root, self.thing, self.configs, self.versions = root, thing, configs, versions
        self.unknown: List[str] = []  # placeholders the nucleus would log and leave

    def system(self, component: str, namespace: str, key: str) -> Optional[str]:
        version = self.versions[component]
        paths = {("artifacts", "path"): self.root / "packages/artifacts" / component / version,
                 ("artifacts", "decompressedPath"):
                     self.root / "packages/artifacts-unarchived" / component / version,
                 ("work", "path"): self.root / "work" / component,
                 ("kernel", "rootPath"): self.root}
        if (namespace, key) in paths:
            return str(paths[(namespace, key)])
        if (namespace, key) == ("iot", "thingName"):
            return self.thing
        return None

    def configuration(self, component: str, pointer: str) -> Optional[str]:
        node = json_pointer(self.configs[component], pointer)
        if node is MISSING:
            return None
        if isinstance(node, (dict, list)):
            return json.dumps(node, sort_keys=True, separators=(",", ":"))
        if node is None:
            return "null"
        if isinstance(node, bool):
            return "true" if node else "false"
        return str(node)

    def lookup(self, component: str, namespace: str, key: str) -> Optional[str]:
        if namespace == "configuration":
            return self.configuration(component, key)
        if namespace in ("artifacts", "work", "kernel", "iot"):
            return self.system(component, namespace, key)
        self.unknown.append("{{{}:{}}}".format(namespace, key))
        return None

    def interpolate(self, value: Any, component: str, dependencies: Set[str]) -> Any:
        if isinstance(value, dict):
            return {k: self.interpolate(v, component, dependencies) for k, v in value.items()}
        if not isinstance(value, str):
            return value
        for match in list(SAME.finditer(value)):
            found = self.lookup(component, match.group(1), match.group(2))
            if found is not None:
                value = value.replace(match.group(0), found)
        for match in list(CROSS.finditer(value)):
            target, namespace, key = match.groups()
            if target not in dependencies:
                self.unknown.append(match.group(0))
                continue
            found = self.lookup(target, namespace, key)
            if found is not None:
                value = value.replace(match.group(0), found)
        return value


MISSING = object()


def json_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901, as Jackson's JsonNode.at: "" is the whole document, a missing step is MISSING."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        return MISSING
    node = document
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return MISSING
    return node


def merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """A configuration update's merge: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_recipe() -> Dict[str, Any]:
    return yaml.safe_load(RECIPE.read_text())


def manifest_for(recipe: Dict[str, Any], architecture: str) -> Dict[str, Any]:
    return next(m for m in recipe["Manifests"] if m["Platform"]["architecture"] == architecture)


def deployment_config(recipe: Dict[str, Any], deployment: Dict[str, Any]) -> Dict[str, Any]:
    update = deployment["components"][COMPONENT]["configurationUpdate"]
    return merge(recipe["ComponentConfiguration"]["DefaultConfiguration"], json.loads(update["merge"]))


# -- the substitution rules themselves -----------------------------------------------------------

def test_interpolation_follows_the_documented_rules(tmp_path):
    nucleus = Nucleus(tmp_path, "camera-7", {
        "me": {"s": "text", "n": 10, "f": 1.5, "b": True, "z": None, "obj": {"b": "2", "a": [1, "x"]},
               "a/b": "slash", "list": ["zero", "one"]},
        "dep": {"port": 8000}}, {"me": "1.2.3", "dep": "2.0.0"})
    line = ("{configuration:/s} {configuration:/n} {configuration:/f} {configuration:/b} "
            "{configuration:/z} {configuration:/obj} {configuration:/a~1b} {configuration:/list/1} "
            "{configuration:/missing} {artifacts:path} {artifacts:decompressedPath} {work:path} "
            "{kernel:rootPath} {iot:thingName} {dep:configuration:/port} {dep:work:path} "
            "{other:configuration:/x} {GG_X:+y}")
    out = nucleus.interpolate(line, "me", {"dep"}).split(" ")
    assert out[:9] == ["text", "10", "1.5", "true", "null", '{"a":[1,"x"],"b":"2"}', "slash", "one",
                       "{configuration:/missing}"]
    assert out[9:14] == [str(tmp_path / "packages/artifacts/me/1.2.3"),
                         str(tmp_path / "packages/artifacts-unarchived/me/1.2.3"),
                         str(tmp_path / "work/me"), str(tmp_path), "camera-7"]
    assert out[14:] == ["8000", str(tmp_path / "work/dep"), "{other:configuration:/x}", "{GG_X:+y}"]
    assert nucleus.unknown == ["{GG_X:+y}", "{other:configuration:/x}"]


# -- the documents -----------------------------------------------------------------------------

def _enum_problems(value: Any, shape: Any, where: str = "") -> List[str]:
    """botocore's ParamValidator checks types and required members, not enum values."""
    problems = []
    if getattr(shape, "enum", None) and isinstance(value, str) and value not in shape.enum:
        problems.append("{}={!r} is not one of {}".format(where, value, shape.enum))
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                problems += _enum_problems(item, shape.members[key], where + "." + key)
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            problems += _enum_problems(item, shape.value, "{}[{}]".format(where, key))
    elif shape.type_name == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            problems += _enum_problems(item, shape.member, "{}[{}]".format(where, i))
    return problems


def validate(operation: str, document: Dict[str, Any]) -> List[str]:
    import botocore.session
    from botocore.validate import ParamValidator
    shape = botocore.session.get_session().get_service_model("greengrassv2") \
        .operation_model(operation).input_shape
    report = ParamValidator().validate(document, shape)
    return ([report.generate_report()] if report.has_errors() else []) + _enum_problems(document, shape)


def test_deployment_document_validates_against_the_service_model():
    deployment = json.loads(DEPLOYMENT.read_text())
    assert validate("CreateDeployment", deployment) == []
    assert ":thinggroup/" in deployment["targetArn"]
    policies = deployment["deploymentPolicies"]
    assert policies["failureHandlingPolicy"] == "ROLLBACK"
    assert policies["componentUpdatePolicy"]["action"] == "NOTIFY_COMPONENTS"
    job = deployment["iotJobConfiguration"]
    assert job["jobExecutionsRolloutConfig"]["maximumPerMinute"] > 0
    assert {c["failureType"] for c in job["abortConfig"]["criteriaList"]} >= {"FAILED"}
    # The checker itself: a misspelt enum and a wrong type are caught.
    bad = copy.deepcopy(deployment)
    bad["deploymentPolicies"]["failureHandlingPolicy"] = "ROLLBAK"
    bad["components"][COMPONENT]["runWith"]["systemResourceLimits"]["memory"] = "1102400"
    assert len(validate("CreateDeployment", bad)) == 2


def test_deployment_fits_the_recipe_and_the_memory_rule():
    recipe, deployment = load_recipe(), json.loads(DEPLOYMENT.read_text())
    component = deployment["components"][COMPONENT]
    assert component["componentVersion"] == recipe["ComponentVersion"] and COMPONENT == recipe["ComponentName"]
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    update = json.loads(component["configurationUpdate"]["merge"])
    assert set(update) <= set(defaults), "the merge names keys the recipe does not have"
    config = deployment_config(recipe, deployment)
    params = parse_parameters(config["Parameters"])  # every value obeys its rule
    limits = component["runWith"]["systemResourceLimits"]
    # Two workers (one serving, one loading during a reload) plus the supervisor.
    assert limits["memory"] == outer_memory_kb(params.memory_limit_kb)
    assert 0 < limits["cpus"]


def test_recipe_validates_as_create_component_version_input():
    assert validate("CreateComponentVersion", {"inlineRecipe": RECIPE.read_bytes()}) == []
    lambda_source = json.loads((V2 / "lambda-function-recipe-source.json").read_text())
    assert validate("CreateComponentVersion", {"lambdaFunction": lambda_source}) == []


def test_recipe_structure_and_placeholders():
    recipe = load_recipe()
    assert recipe["RecipeFormatVersion"] == "2020-01-25"
    assert {m["Platform"]["architecture"] for m in recipe["Manifests"]} == {"amd64", "aarch64", "arm"}
    for dependency in recipe.get("ComponentDependencies", {}).values():
        assert set(dependency) <= {"VersionRequirement", "DependencyType"}
        assert dependency.get("DependencyType", "HARD") in ("HARD", "SOFT")
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert parse_parameters(defaults["Parameters"])
    lifecycles = []
    for manifest in recipe["Manifests"]:
        life = manifest["Lifecycle"]
        assert set(life) <= LIFECYCLE_STEPS
        for step, body in life.items():
            if step != "Setenv":
                assert set(body) <= STEP_KEYS, (step, body)
        for artifact in manifest["Artifacts"]:
            assert artifact["URI"].startswith("s3://") and artifact.get("Unarchive", "NONE") in ("NONE", "ZIP")
        # The three platforms differ only in the install script's name and its timeout.
        text = json.dumps(life)
        lifecycles.append(re.sub(r"install-[a-z0-9_]+\.sh", "install-ARCH.sh",
                                 text.replace('"Timeout": 3600', '"Timeout": 1800')))
    assert len(set(lifecycles)) == 1
    # Every placeholder resolves against the default configuration; none is of an unknown kind.
    nucleus = Nucleus(Path("/greengrass/v2"), "thing", {COMPONENT: defaults}, {COMPONENT: recipe["ComponentVersion"]})
    resolved = json.dumps(nucleus.interpolate(recipe["Manifests"][0]["Lifecycle"], COMPONENT,
                                              set(recipe.get("ComponentDependencies", {}))))
    assert nucleus.unknown == [] and not SAME.search(resolved), (nucleus.unknown, resolved)


# -- the lifecycle, run ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Core:
    """A fake kernel root with this component deployed: artifacts in place, lifecycle interpolated."""

    def __init__(self, root: Path, wheel: Path, update: Dict[str, Any]) -> None:
        recipe = load_recipe()
        self.version = recipe["ComponentVersion"]
        self.config = merge(deployment_config(recipe, json.loads(DEPLOYMENT.read_text())), update)
        self.nucleus = Nucleus(root, "camera-7", {COMPONENT: self.config}, {COMPONENT: self.version})
        artifacts = Path(self.nucleus.system(COMPONENT, "artifacts", "path"))
        unarchived = Path(self.nucleus.system(COMPONENT, "artifacts", "decompressedPath"))
        self.work = Path(self.nucleus.system(COMPONENT, "work", "path"))
        for d in (artifacts, unarchived, self.work):
            d.mkdir(parents=True)
        os.chmod(str(self.work), 0o755)  # as the nucleus leaves it (umask 022)
        (artifacts / wheel.name).write_bytes(wheel.read_bytes())
        repo_zip = artifacts / "ml-object-detection-connector.zip"
        subprocess.run(["git", "archive", "--format=zip", "-o", str(repo_zip), "HEAD"], cwd=ROOT, check=True)
        with zipfile.ZipFile(str(repo_zip)) as z:  # a ZIP unpacks into <decompressedPath>/<name>/
            z.extractall(str(unarchived / "ml-object-detection-connector"))
        machine = {"x86_64": "amd64", "aarch64": "aarch64", "armv7l": "arm"}[os.uname().machine]
        self.lifecycle = self.nucleus.interpolate(manifest_for(recipe, machine)["Lifecycle"], COMPONENT,
                                                  set(recipe.get("ComponentDependencies", {})))
        assert self.nucleus.unknown == []

    def env(self, step: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "GG_", "MLModel", "LocalInference", "PYTHON"))}
        env.update(self.lifecycle.get("Setenv", {}), **self.lifecycle[step].get("Setenv", {}))
        env["AWS_REGION"] = "eu-west-1"  # the nucleus gives every component its region
        return env

    def start(self, step: str, log: Path) -> subprocess.Popen:
        # The nucleus runs a step as `sh -c <script>` in the component's work directory.
        return subprocess.Popen(["sh", "-c", self.lifecycle[step]["Script"]], cwd=str(self.work),
                                env=self.env(step), stdout=open(str(log), "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)

    def run_step(self, step: str, log: Path) -> int:
        timeout = self.lifecycle[step].get("Timeout", 120)
        proc = self.start(step, log)
        try:
            return proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("{} ran past its Timeout {} s:\n{}".format(step, timeout, log.read_text()))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), str(ROOT)], check=True, timeout=300)
    return next(out.glob("ml_object_detection_connector-*.whl"))


def package_install(tmp_path: Path, **extra: Any) -> Dict[str, Any]:
    """The test configuration: Install=package from this environment's packages (see the module
    docstring), a free port, the bundled demo model."""
    from connector.demos import model_path
    update = {"Install": "package", "Python": sys.executable, "Prefix": str(tmp_path / "prefix"),
              "SitePackages": sysconfig.get_paths()["purelib"], "Port": str(free_port()), "ClientFileGroup": "",
              "Parameters": {"MLModelDestinationPath": model_path("demo-ssd")}}
    return merge(update, extra)


def one_object_jpeg():
    for seed in range(100):
        rgb, boxes = sd.make_sample(np.random.default_rng([99002, seed]), 512, 512, max_objects=1)
        if len(boxes) == 1:
            return sd.encode_mixed(rgb, 0)[0], int(boxes[0][0])
    raise AssertionError("no one-object sample")


@pytest.mark.timeout(600)
def test_install_run_call_and_shutdown(tmp_path, wheel, sdk_env):
    core = Core(tmp_path / "greengrass" / "v2", wheel, package_install(tmp_path))
    assert core.run_step("Install", tmp_path / "install.log") == 0, (tmp_path / "install.log").read_text()
    run = core.start("Run", tmp_path / "run.log")
    try:
        ipc = core.work / "ipc.json"
        deadline = scaled(60)
        started = time.monotonic()
        while time.monotonic() - started < deadline and run.poll() is None:
            try:
                entry = clientfile.read(str(ipc), "objectDetection")
                break
            except (OSError, ValueError):
                time.sleep(0.1)
        else:
            raise AssertionError("no client file:\n" + (tmp_path / "run.log").read_text())
        assert entry["port"] == int(core.config["Port"]) and entry["host"] == "127.0.0.1"
        while healthz(entry["port"], path="/readyz")[0] != 200:  # the model loads after the host starts
            assert run.poll() is None and time.monotonic() - started < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.1)
        assert entry["region"] == "eu-west-1"
        # The parameters arrived as the JSON object the nucleus interpolates, written 0600.
        params = json.loads((core.work / "params.json").read_text())
        assert params == core.config["Parameters"]
        assert os.stat(str(core.work / "params.json")).st_mode & 0o077 == 0
        # A client component: GG_ML_IPC_FILE={com.example.ObjectDetectionService:work:path}/ipc.json.
        client_env = Nucleus(core.nucleus.root, "camera-7", {COMPONENT: core.config},
                             {COMPONENT: core.version}).interpolate(
            "{" + COMPONENT + ":work:path}/ipc.json", "com.example.Client", {COMPONENT})
        sdk_env.setenv("GG_ML_IPC_FILE", client_env)
        jpeg, cls = one_object_jpeg()
        resp = ml.client("inference").invoke_inference_service(
            AlgoType="object-detection", ServiceName="objectDetection", ContentType="image/jpeg", Body=jpeg)
        top = json.loads(resp["Body"].read().decode("utf-8"))["prediction"][0]
        assert top[0] == cls and top[1] > 0.5, top
        # Shutdown asks serve to stop; it drains, withdraws its entry and exits 0.
        assert core.run_step("Shutdown", tmp_path / "shutdown.log") == 0, (tmp_path / "shutdown.log").read_text()
        assert run.wait(scaled(30)) == 0, (tmp_path / "run.log").read_text()
        assert "finishing in-flight requests" in (tmp_path / "run.log").read_text()
        # A second Shutdown (the nucleus may run it for a component that is not running) is a no-op.
        assert core.run_step("Shutdown", tmp_path / "shutdown2.log") == 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)


def test_a_quote_in_a_configuration_value_is_data_not_code(tmp_path, wheel):
    """Configuration reaches the scripts through Setenv only: a value with a quote and a command
    in it is refused by the parameter rules, and the command never runs."""
    planted = tmp_path / "planted"
    core = Core(tmp_path / "greengrass" / "v2", wheel, package_install(
        tmp_path, Parameters={"MLModelResourceId": "x'; touch {}; echo '".format(planted)}))
    assert core.run_step("Install", tmp_path / "install.log") == 0, (tmp_path / "install.log").read_text()
    assert core.run_step("Run", tmp_path / "run.log") == 2
    log = (tmp_path / "run.log").read_text()
    assert "error: parameter MLModelResourceId=" in log and "does not match the rule" in log, log
    assert not planted.exists()


def test_bad_install_mode_is_one_clear_line(tmp_path, wheel):
    core = Core(tmp_path / "greengrass" / "v2", wheel, package_install(tmp_path, Install="pip"))
    assert core.run_step("Install", tmp_path / "install.log") == 1
    assert "Install must be script or package, not 'pip'" in (tmp_path / "install.log").read_text()
    core = Core(tmp_path / "g2", wheel, package_install(tmp_path, SitePackages=str(tmp_path / "none")))
    assert core.run_step("Install", tmp_path / "install2.log") == 1
    assert "Install=package needs SitePackages" in (tmp_path / "install2.log").read_text()


def test_what_migrate_v1_deploys_is_what_the_component_reads(tmp_path):
    """migrate-v1's deployment configures keys the recipe has (its MqttAllow reaches the service
    as GG_MQTT_ALLOW on every platform), for the component version this package is."""
    from connector import __version__

    recipe = load_recipe()
    assert recipe["ComponentVersion"] == __version__
    out = tmp_path / "migrated"
    subprocess.run([sys.executable, "-m", "connector", "migrate-v1",
                    str(ROOT / "tests" / "fixtures" / "greengrass-v1" / "group-x86_64.json"),
                    "--out", str(out), "--model-path", str(tmp_path)], check=True, cwd=str(ROOT),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deployment = json.loads((out / "deployment.json").read_text())
    component = deployment["components"]["com.example.ObjectDetectionService"]
    assert component["componentVersion"] == __version__
    merged = json.loads(component["configurationUpdate"]["merge"])
    assert set(merged) <= set(recipe["ComponentConfiguration"]["DefaultConfiguration"]), merged
    for manifest in recipe["Manifests"]:
        assert manifest["Lifecycle"]["Setenv"]["GG_MQTT_ALLOW"] == "{configuration:/MqttAllow}"
        assert manifest["Lifecycle"]["Setenv"]["GG_MQTT_URL"] == "{configuration:/MqttUrl}"
