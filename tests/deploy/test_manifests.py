"""Validation of manifests/: connector definitions, the seed's CLI example, Greengrass V1/V2 configs.

The parameter table below is copied from SPEC.md section 2 (the contract). Every manifest is checked
against it, and the checker functions are also run on deliberately broken copies so that a wrong
pattern, a misplaced GPUAcceleration or a wrong handler in a manifest makes these tests fail.
"""
import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from connector.tools.deploy import outer_memory_kb

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
HANDLER = "connector.lambda_function.function_handler"

# SPEC.md section 2: name -> (required, pattern). GPUAcceleration has allowed values instead.
SPEC_PARAMETERS = {
    "MLModelDestinationPath": (True, r".+"),
    "MLModelResourceId": (True, r"^[a-zA-Z0-9:_-]+$"),
    "LocalInferenceServiceName": (True, r"^[a-zA-Z0-9][a-zA-Z0-9-]{1,62}$"),
    "LocalInferenceServiceTimeoutSeconds": (True, r"^[1-9][0-9]*$"),
    "LocalInferenceServiceMemoryLimitKB": (True, r"^[1-9][0-9]*$"),
    "MLFeedbackConnectorConfigId": (False, r"^$|^[a-zA-Z0-9][a-zA-Z0-9-]{1,62}$"),
}
GPU_ALLOWED = ["CPU", "GPU"]
REQUIRED = [n for n, (req, _) in SPEC_PARAMETERS.items() if req]
ALL_NAMES = set(SPEC_PARAMETERS) | {"GPUAcceleration"}

# The seed's three ARNs, verbatim (literal `region` placeholder as in the seed).
SEED_ARNS = {
    "ObjectDetectionAarch64JTX2": "arn:aws:greengrass:region::/connectors/ObjectDetectionAarch64JTX2/versions/1",
    "ObjectDetectionx86-64": "arn:aws:greengrass:region::/connectors/ObjectDetectionx86-64/versions/1",
    "ObjectDetectionARMv7": "arn:aws:greengrass:region::/connectors/ObjectDetectionARMv7/versions/1",
}
JETSON = "ObjectDetectionAarch64JTX2"

# The seed's `aws greengrass create-connector-definition` example, verbatim.
SEED_EXAMPLE_PARAMETERS = {
    "MLModelDestinationPath": "/path-to-model",
    "MLModelResourceId": "my-ml-resource",
    "LocalInferenceServiceName": "objectDetection",
    "LocalInferenceServiceTimeoutSeconds": "10",
    "LocalInferenceServiceMemoryLimitKB": "500000",
    "MLFeedbackConnectorConfigId": "object-detector-random-sampling",
}

# Member names of the AWS API shapes the documents are checked against (botocore service models
# greengrass 2017-06-07 and greengrassv2 2020-11-30): a misspelt key would be rejected by the CLI.
V1_FUNCTION_KEYS = {"Id", "FunctionArn", "FunctionConfiguration"}
V1_FUNCTION_CONFIGURATION_KEYS = {"EncodingType", "Environment", "ExecArgs", "Executable", "MemorySize",
                                  "Pinned", "Timeout", "FunctionRuntimeOverride"}
V1_ENVIRONMENT_KEYS = {"AccessSysfs", "Execution", "ResourceAccessPolicies", "Variables"}
V1_ML_RESOURCE_KEYS = {"DestinationPath", "OwnerSetting", "S3Uri", "SageMakerJobArn"}
V2_RECIPE_SOURCE_KEYS = {"lambdaArn", "componentName", "componentVersion", "componentPlatforms",
                         "componentDependencies", "componentLambdaParameters"}
V2_LAMBDA_PARAMETER_KEYS = {"eventSources", "maxQueueSize", "maxInstancesCount", "maxIdleTimeInSeconds",
                            "timeoutInSeconds", "statusTimeoutInSeconds", "pinned",
                            "inputPayloadEncodingType", "execArgs", "environmentVariables",
                            "linuxProcessParams"}
V2_CONTAINER_PARAMS_KEYS = {"memorySizeInKB", "mountROSysfs", "volumes", "devices"}
V2_LAUNCHER_DEPENDENCIES = {"aws.greengrass.LambdaLauncher", "aws.greengrass.LambdaRuntimes",
                            "aws.greengrass.TokenExchangeService"}


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f) if path.suffix == ".json" else yaml.safe_load(f)


def connector_path(name):
    return MANIFESTS / "connectors" / (name + ".json")


def matches(pattern, value):
    # Whole-string match, as the service (and connector/params.py) applies the rule.
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


# ---------------------------------------------------------------- checkers (return problem lists)

def connector_problems(doc, variant):
    problems = []
    if doc.get("ConnectorArn") != SEED_ARNS[variant]:
        problems.append("ConnectorArn {!r} is not the seed's {!r}".format(doc.get("ConnectorArn"),
                                                                          SEED_ARNS[variant]))
    if doc.get("Name") != variant:
        problems.append("Name {!r} != {!r}".format(doc.get("Name"), variant))
    params = doc.get("Parameters") or []
    names = [p.get("Name") for p in params]
    expected = set(SPEC_PARAMETERS) | ({"GPUAcceleration"} if variant == JETSON else set())
    if len(names) != len(set(names)):
        problems.append("duplicate parameter names: {}".format(names))
    if set(names) != expected:
        problems.append("parameters {} != expected {}".format(sorted(set(names)), sorted(expected)))
    for p in params:
        name = p.get("Name")
        for key in ("Type", "Description", "ConsoleDisplayName"):
            if not p.get(key):
                problems.append("{}: missing {}".format(name, key))
        if name == "GPUAcceleration":
            if p.get("AllowedValues") != GPU_ALLOWED:
                problems.append("GPUAcceleration AllowedValues {!r}".format(p.get("AllowedValues")))
            if p.get("Required") is not True:
                problems.append("GPUAcceleration must be required on the Jetson variant")
            continue
        if name not in SPEC_PARAMETERS:
            continue
        required, pattern = SPEC_PARAMETERS[name]
        if p.get("ValidationPattern") != pattern:
            problems.append("{}: pattern {!r} != SPEC {!r}".format(name, p.get("ValidationPattern"), pattern))
        try:
            re.compile(p.get("ValidationPattern") or "")
        except re.error as e:
            problems.append("{}: pattern does not compile: {}".format(name, e))
        if p.get("Required") is not required:
            problems.append("{}: Required {!r} != {!r}".format(name, p.get("Required"), required))
        if "Default" in p:
            if not matches(pattern, p["Default"]):
                problems.append("{}: default {!r} does not match its pattern".format(name, p["Default"]))
    timeout = [p for p in params if p.get("Name") == "LocalInferenceServiceTimeoutSeconds"]
    if timeout and timeout[0].get("Default") != "10":
        problems.append("LocalInferenceServiceTimeoutSeconds default {!r} != '10'".format(timeout[0].get("Default")))
    return problems


# Not connector parameters: where a `--deps device` Lambda package finds NumPy/OpenCV/the runtime.
DEPLOYMENT_VARIABLES = {"GG_ML_SITE_PACKAGES"}
# Runtimes `aws lambda create-function` still accepts (python3.8 and 3.9 are blocked for new
# functions); Greengrass V1 runs the function with FunctionRuntimeOverride on the device.
LAMBDA_CREATE_RUNTIMES = ("python3.11", "python3.12", "python3.13")


def value_problems(values, variant=None, where=""):
    """Connector parameter values (strings, as Greengrass delivers them) against the SPEC table."""
    problems = []
    for name in REQUIRED:
        if name not in values:
            problems.append("{}: required parameter {} missing".format(where, name))
    for name, value in values.items():
        if name in DEPLOYMENT_VARIABLES:
            if not value.startswith("/"):
                problems.append("{}: {} must be an absolute path".format(where, name))
        elif name not in ALL_NAMES:
            problems.append("{}: unknown parameter {}".format(where, name))
        elif name == "GPUAcceleration":
            if variant is not None and variant != JETSON:
                problems.append("{}: GPUAcceleration on non-Jetson variant {}".format(where, variant))
            if value not in GPU_ALLOWED:
                problems.append("{}: GPUAcceleration={!r} not in {}".format(where, value, GPU_ALLOWED))
        elif not matches(SPEC_PARAMETERS[name][1], value):
            problems.append("{}: {}={!r} does not match {}".format(where, name, value, SPEC_PARAMETERS[name][1]))
    if variant == JETSON and "GPUAcceleration" not in values:
        problems.append("{}: the Jetson variant requires GPUAcceleration".format(where))
    return problems


def v1_problems(functions_doc, resources_doc):
    problems = []
    functions = functions_doc.get("Functions") or []
    if len(functions) != 1:
        return ["expected exactly one function, got {}".format(len(functions))]
    fn = functions[0]
    problems += ["unknown Function key " + k for k in set(fn) - V1_FUNCTION_KEYS]
    if not re.fullmatch(r"[a-zA-Z0-9:_-]+", fn.get("Id", "")):
        problems.append("function Id {!r}".format(fn.get("Id")))
    if not re.fullmatch(r"arn:aws:lambda:[^:]+:[^:]+:function:[^:]+:[^:]+", fn.get("FunctionArn", "")):
        problems.append("FunctionArn must name an alias or version: {!r}".format(fn.get("FunctionArn")))
    conf = fn.get("FunctionConfiguration", {})
    problems += ["unknown FunctionConfiguration key " + k for k in set(conf) - V1_FUNCTION_CONFIGURATION_KEYS]
    if conf.get("Executable") != HANDLER:
        problems.append("Executable {!r} != {!r}".format(conf.get("Executable"), HANDLER))
    if conf.get("Pinned") is not True:
        problems.append("function must be pinned (long-lived)")
    if conf.get("EncodingType") != "binary":
        problems.append("EncodingType must be binary (the event is the image bytes)")
    if conf.get("FunctionRuntimeOverride") not in ("python3.7", "python3.8"):
        problems.append("FunctionRuntimeOverride must be python3.7 or python3.8 (the seed's requirement; "
                        "the Lambda itself is created with a runtime AWS still accepts)")
    env = conf.get("Environment", {})
    problems += ["unknown Environment key " + k for k in set(env) - V1_ENVIRONMENT_KEYS]
    variables = env.get("Variables", {})
    problems += value_problems(variables, where="V1 Variables")
    isolation = env.get("Execution", {}).get("IsolationMode", "GreengrassContainer")
    timeout = conf.get("Timeout")
    if not isinstance(timeout, int) or timeout <= int(variables.get("LocalInferenceServiceTimeoutSeconds", "10")):
        problems.append("Timeout {!r} must exceed LocalInferenceServiceTimeoutSeconds so the service's "
                        "own timeout error reaches the caller".format(timeout))

    resources = resources_doc.get("Resources") or []
    by_id = {r.get("Id"): r for r in resources}
    res_id = variables.get("MLModelResourceId")
    resource = by_id.get(res_id)
    if resource is None:
        problems.append("no resource with Id {!r} (= MLModelResourceId)".format(res_id))
        return problems
    container = resource.get("ResourceDataContainer", {})
    kinds = [k for k in container if k in ("S3MachineLearningModelResourceData",
                                           "SageMakerMachineLearningModelResourceData")]
    if len(kinds) != 1 or len(container) != 1:
        problems.append("resource must hold exactly one ML model resource data: {}".format(list(container)))
        return problems
    data = container[kinds[0]]
    problems += ["unknown ML resource key " + k for k in set(data) - V1_ML_RESOURCE_KEYS]
    if data.get("DestinationPath") != variables.get("MLModelDestinationPath"):
        problems.append("resource DestinationPath {!r} != MLModelDestinationPath {!r}".format(
            data.get("DestinationPath"), variables.get("MLModelDestinationPath")))
    policies = [p for p in env.get("ResourceAccessPolicies", []) if p.get("ResourceId") == res_id]
    if len(policies) != 1:
        problems.append("exactly one ResourceAccessPolicy must attach {!r}".format(res_id))
        return problems
    owner = data.get("OwnerSetting")
    if isolation == "GreengrassContainer":
        if policies[0].get("Permission") != "ro":
            problems.append("containerized function must have read-only access to the model")
        limit_kb = int(variables.get("LocalInferenceServiceMemoryLimitKB", "0"))
        if not isinstance(conf.get("MemorySize"), int) or conf["MemorySize"] < outer_memory_kb(limit_kb):
            problems.append("MemorySize (KB) must hold two workers of LocalInferenceServiceMemoryLimitKB "
                            "(a reload) plus the supervisor: at least {}".format(outer_memory_kb(limit_kb)))
    elif isolation == "NoContainer":
        # AWS V1 guide, "Access machine learning resources": NoContainer functions inherit the
        # resource owner's permission; Permission in the policy is refused; MemorySize is cleared.
        if "Permission" in policies[0]:
            problems.append("NoContainer function cannot set Permission on an ML resource")
        if "MemorySize" in conf:
            problems.append("MemorySize does not apply without containerization")
        if not owner or owner.get("GroupPermission") != "ro" or not owner.get("GroupOwner"):
            problems.append("NoContainer access needs OwnerSetting with GroupOwner and GroupPermission ro")
    else:
        problems.append("IsolationMode {!r}".format(isolation))
    return problems


def v2_problems(source, recipe):
    problems = []
    problems += ["unknown LambdaFunctionRecipeSource key " + k for k in set(source) - V2_RECIPE_SOURCE_KEYS]
    params = source.get("componentLambdaParameters", {})
    problems += ["unknown LambdaExecutionParameters key " + k for k in set(params) - V2_LAMBDA_PARAMETER_KEYS]
    linux = params.get("linuxProcessParams", {})
    problems += ["unknown LambdaLinuxProcessParams key " + k
                 for k in set(linux) - {"isolationMode", "containerParams"}]
    cparams = linux.get("containerParams", {})
    problems += ["unknown LambdaContainerParams key " + k for k in set(cparams) - V2_CONTAINER_PARAMS_KEYS]
    env = params.get("environmentVariables", {})
    problems += value_problems(env, where="V2 environmentVariables")
    if params.get("pinned") is not True:
        problems.append("V2 function must be pinned")
    if params.get("inputPayloadEncodingType") != "binary":
        problems.append("V2 inputPayloadEncodingType must be binary")
    if params.get("maxInstancesCount") != 1:
        problems.append("one instance owns the model: maxInstancesCount must be 1")
    if not re.fullmatch(r"arn:aws:lambda:[^:]+:[^:]+:function:[^:]+:[0-9]+", source.get("lambdaArn", "")):
        problems.append("lambdaArn must include the function version: {!r}".format(source.get("lambdaArn")))
    archs = sorted(p.get("attributes", {}).get("architecture") for p in source.get("componentPlatforms", []))
    if archs != ["aarch64", "amd64", "arm"]:
        problems.append("componentPlatforms architectures {}".format(archs))
    deps = source.get("componentDependencies", {})
    if set(deps) != V2_LAUNCHER_DEPENDENCIES:
        problems.append("componentDependencies {}".format(sorted(deps)))
    for dep in deps.values():
        if set(dep) - {"versionRequirement", "dependencyType"} or dep.get("dependencyType") not in ("HARD", "SOFT"):
            problems.append("bad dependency requirement {}".format(dep))

    # The recipe describes the same component.
    if recipe.get("ComponentType") != "aws.greengrass.lambda":
        problems.append("recipe ComponentType must be aws.greengrass.lambda")
    if recipe.get("ComponentName") != source.get("componentName") or \
            str(recipe.get("ComponentVersion")) != source.get("componentVersion"):
        problems.append("recipe name/version differ from the recipe source")
    if recipe.get("ComponentSource") != source.get("lambdaArn"):
        problems.append("recipe ComponentSource differs from lambdaArn")
    if set(recipe.get("ComponentDependencies", {})) != V2_LAUNCHER_DEPENDENCIES:
        problems.append("recipe ComponentDependencies {}".format(sorted(recipe.get("ComponentDependencies", {}))))
    conf = recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
    renv = conf.get("lambdaExecutionParameters", {}).get("EnvironmentVariables", {})
    problems += value_problems(renv, where="recipe EnvironmentVariables")
    if renv != env:
        problems.append("recipe EnvironmentVariables differ from environmentVariables")
    for rkey, skey in (("pinned", "pinned"), ("timeoutInSeconds", "timeoutInSeconds"),
                       ("maxInstancesCount", "maxInstancesCount"),
                       ("inputPayloadEncodingType", "inputPayloadEncodingType")):
        if conf.get(rkey) != params.get(skey):
            problems.append("recipe {} {!r} != {!r}".format(rkey, conf.get(rkey), params.get(skey)))
    mode = conf.get("containerMode")
    if mode != linux.get("isolationMode", "GreengrassContainer"):
        problems.append("recipe containerMode {!r} != isolationMode {!r}".format(mode, linux.get("isolationMode")))
    if conf.get("containerParams", {}).get("memorySize") != cparams.get("memorySizeInKB"):
        problems.append("recipe containerParams.memorySize != memorySizeInKB")
    if mode == "GreengrassContainer":
        model = env.get("MLModelDestinationPath")
        if not any(v.get("destinationPath") == model for v in cparams.get("volumes", [])):
            problems.append("GreengrassContainer mode needs a volume mounting the model directory")
    elif mode != "NoContainer":
        problems.append("containerMode {!r}".format(mode))
    timeout = params.get("timeoutInSeconds")
    if not isinstance(timeout, int) or timeout <= int(env.get("LocalInferenceServiceTimeoutSeconds", "10")):
        problems.append("timeoutInSeconds must exceed LocalInferenceServiceTimeoutSeconds")
    setenv = recipe.get("Lifecycle", {}).get("setenv", {})
    if setenv.get("AWS_GREENGRASS_LAMBDA_FUNCTION_HANDLER") != HANDLER:
        problems.append("recipe handler {!r}".format(setenv.get("AWS_GREENGRASS_LAMBDA_FUNCTION_HANDLER")))
    try:
        exec_args = json.loads(setenv.get("AWS_GREENGRASS_LAMBDA_EXEC_ARGS", "[]"))
    except ValueError:
        exec_args = []
    if "--handler=" + HANDLER not in exec_args:
        problems.append("recipe exec args do not name the handler: {!r}".format(exec_args))
    if setenv.get("AWS_GREENGRASS_LAMBDA_RUNTIME") not in ("python3.7", "python3.8") or \
            (exec_args[:1] != [setenv.get("AWS_GREENGRASS_LAMBDA_RUNTIME")]):
        problems.append("recipe runtime must be python3.7/3.8 and match the exec args")
    if setenv.get("AWS_GREENGRASS_LAMBDA_ARN") != source.get("lambdaArn"):
        problems.append("recipe AWS_GREENGRASS_LAMBDA_ARN differs from lambdaArn")
    platforms = sorted(m.get("Platform", {}).get("architecture") for m in recipe.get("Manifests", []))
    if platforms != ["aarch64", "amd64", "arm"]:
        problems.append("recipe manifests architectures {}".format(platforms))
    return problems


# ---------------------------------------------------------------- the files

ALL_DOCUMENTS = sorted(p for p in MANIFESTS.rglob("*") if p.suffix in (".json", ".yaml", ".yml"))
V1 = MANIFESTS / "greengrass-v1"
V1_PAIRS = [(V1 / "function-definition.json", V1 / "resource-definition.json"),
            (V1 / "jetson-gpu-nocontainer" / "function-definition.json",
             V1 / "jetson-gpu-nocontainer" / "resource-definition.json")]
V2 = MANIFESTS / "greengrass-v2"


def test_manifest_documents_exist():
    names = {str(p.relative_to(MANIFESTS)) for p in ALL_DOCUMENTS}
    for expected in ["connectors/%s.json" % v for v in SEED_ARNS] + [
            "create-connector-definition.json", "greengrass-v1/function-definition.json",
            "greengrass-v1/resource-definition.json", "greengrass-v1/lambda-function.json",
            "greengrass-v2/recipe.yaml", "greengrass-v2/lambda-function-recipe-source.json"]:
        assert expected in names
    assert (MANIFESTS / "README.md").is_file()


@pytest.mark.parametrize("path", ALL_DOCUMENTS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_document_parses(path):
    doc = load(path)
    assert isinstance(doc, dict) and doc


@pytest.mark.parametrize("variant", sorted(SEED_ARNS))
def test_connector_definition(variant):
    assert connector_problems(load(connector_path(variant)), variant) == []


@pytest.mark.parametrize("variant", sorted(SEED_ARNS))
def test_connector_patterns_compile_and_equal_spec(variant):
    for p in load(connector_path(variant))["Parameters"]:
        if "ValidationPattern" in p:
            re.compile(p["ValidationPattern"])
            assert p["ValidationPattern"] == SPEC_PARAMETERS[p["Name"]][1], p["Name"]


def test_gpu_acceleration_only_on_jetson():
    for variant in SEED_ARNS:
        names = {p["Name"] for p in load(connector_path(variant))["Parameters"]}
        assert ("GPUAcceleration" in names) == (variant == JETSON), variant


def test_required_flags():
    for variant in SEED_ARNS:
        flags = {p["Name"]: p["Required"] for p in load(connector_path(variant))["Parameters"]}
        for name in ("MLModelDestinationPath", "MLModelResourceId", "LocalInferenceServiceName",
                     "LocalInferenceServiceTimeoutSeconds", "LocalInferenceServiceMemoryLimitKB"):
            assert flags[name] is True, (variant, name)
        assert flags["MLFeedbackConnectorConfigId"] is False


def test_create_connector_definition_is_the_seed_example():
    doc = load(MANIFESTS / "create-connector-definition.json")
    assert list(doc) == ["Connectors"]
    (connector,) = doc["Connectors"]
    assert connector["Id"] == "MyObjectDetectionConnector"
    assert connector["ConnectorArn"] == SEED_ARNS["ObjectDetectionARMv7"]
    assert connector["Parameters"] == SEED_EXAMPLE_PARAMETERS
    assert value_problems(connector["Parameters"], "ObjectDetectionARMv7", "seed example") == []
    declared = {p["Name"] for p in load(connector_path("ObjectDetectionARMv7"))["Parameters"]}
    assert set(connector["Parameters"]) <= declared


@pytest.mark.parametrize("functions, resources", V1_PAIRS, ids=["container", "jetson-gpu-nocontainer"])
def test_greengrass_v1_function_and_resource(functions, resources):
    assert v1_problems(load(functions), load(resources)) == []


def test_greengrass_v1_handler_and_lambda():
    fn = load(V1 / "function-definition.json")["Functions"][0]
    assert fn["FunctionConfiguration"]["Executable"] == HANDLER
    lam = load(V1 / "lambda-function.json")
    assert lam["Handler"] == HANDLER
    assert lam["Runtime"] in LAMBDA_CREATE_RUNTIMES
    assert lam["Publish"] is True  # Greengrass V1 needs a version (or an alias of one)
    assert lam["FunctionName"] == fn["FunctionArn"].split(":")[6]
    # GPUAcceleration goes only with the Jetson (NoContainer) configuration.
    assert "GPUAcceleration" not in fn["FunctionConfiguration"]["Environment"]["Variables"]
    jetson = load(V1 / "jetson-gpu-nocontainer" / "function-definition.json")["Functions"][0]
    assert jetson["FunctionConfiguration"]["Environment"]["Variables"]["GPUAcceleration"] in GPU_ALLOWED


def test_greengrass_v2_recipe_and_source():
    assert v2_problems(load(V2 / "lambda-function-recipe-source.json"), load(V2 / "recipe.yaml")) == []


def test_handler_module_and_function_exist():
    module, func = HANDLER.rsplit(".", 1)
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        pytest.skip("{} not written yet".format(path))
    assert re.search(r"^def {}\(".format(func), path.read_text(encoding="utf-8"), re.M)


@pytest.mark.parametrize("pattern_of, value, ok", [
    ("LocalInferenceServiceName", "objectDetection", True),
    ("LocalInferenceServiceName", "od", True),
    ("LocalInferenceServiceName", "x", False),
    ("LocalInferenceServiceName", "-bad", False),
    ("LocalInferenceServiceName", "a" * 63, True),
    ("LocalInferenceServiceName", "a" * 64, False),
    ("LocalInferenceServiceName", "has_underscore", False),
    ("LocalInferenceServiceName", "objectDetection\n", False),
    ("MLModelResourceId", "my-ml-resource", True),
    ("MLModelResourceId", "arn:aws:x_1", True),
    ("MLModelResourceId", "bad id", False),
    ("MLModelResourceId", "", False),
    ("LocalInferenceServiceTimeoutSeconds", "10", True),
    ("LocalInferenceServiceTimeoutSeconds", "0", False),
    ("LocalInferenceServiceTimeoutSeconds", "010", False),
    ("LocalInferenceServiceTimeoutSeconds", "-1", False),
    ("LocalInferenceServiceMemoryLimitKB", "500000", True),
    ("LocalInferenceServiceMemoryLimitKB", "1.5", False),
    ("MLModelDestinationPath", "/path-to-model", True),
    ("MLModelDestinationPath", "", False),
    ("MLFeedbackConnectorConfigId", "", True),
    ("MLFeedbackConnectorConfigId", "object-detector-random-sampling", True),
    ("MLFeedbackConnectorConfigId", "x", False),
    ("MLFeedbackConnectorConfigId", "-bad", False),
])
def test_pattern_examples(pattern_of, value, ok):
    pattern = SPEC_PARAMETERS[pattern_of][1]
    assert matches(pattern, value) is ok
    # The manifests carry the same rule.
    for variant in SEED_ARNS:
        p = {q["Name"]: q for q in load(connector_path(variant))["Parameters"]}[pattern_of]
        assert matches(p["ValidationPattern"], value) is ok


def test_manifest_values_pass_the_connector_parameter_loader():
    params = pytest.importorskip("connector.params")
    seed = load(MANIFESTS / "create-connector-definition.json")["Connectors"][0]["Parameters"]
    v1 = load(V1 / "function-definition.json")["Functions"][0]["FunctionConfiguration"]["Environment"]["Variables"]
    jetson = load(V1 / "jetson-gpu-nocontainer" / "function-definition.json")["Functions"][0][
        "FunctionConfiguration"]["Environment"]["Variables"]
    v2 = load(V2 / "lambda-function-recipe-source.json")["componentLambdaParameters"]["environmentVariables"]
    for values in (seed, v1, jetson, v2):
        parsed = params.parse_parameters(values)
        assert parsed.service_name == values["LocalInferenceServiceName"]
    assert params.parse_parameters(jetson).gpu is True
    assert params.parse_parameters(v1).gpu is False


def test_connector_params_rules_equal_manifests():
    params = pytest.importorskip("connector.params")
    rules = params.RULES
    assert set(rules) == ALL_NAMES
    for variant in SEED_ARNS:
        for p in load(connector_path(variant))["Parameters"]:
            rule = rules[p["Name"]]
            if "ValidationPattern" in p:
                assert rule.pattern == p["ValidationPattern"], p["Name"]
                assert rule.required == p["Required"], p["Name"]
            else:  # GPUAcceleration: the rule must accept exactly the allowed values
                for value in ["CPU", "GPU", "cpu", "gpu", "", "CPUGPU", "GPU\n", " GPU"]:
                    assert (re.fullmatch(rule.pattern, value) is not None) == (value in p["AllowedValues"]), value
            if "Default" in p:
                assert rule.default == p["Default"], p["Name"]


# ---------------------------------------------------------------- the checks can fail

def _broken(path, mutate):
    doc = copy.deepcopy(load(path))
    mutate(doc)
    return doc


def _param(doc, name):
    return next(p for p in doc["Parameters"] if p["Name"] == name)


@pytest.mark.parametrize("variant, mutate", [
    (JETSON, lambda d: _param(d, "LocalInferenceServiceName").update(ValidationPattern="^[a-z]+$")),
    ("ObjectDetectionx86-64", lambda d: _param(d, "MLModelResourceId").update(ValidationPattern="^[a-zA-Z0-9:_-]*$")),
    ("ObjectDetectionARMv7", lambda d: _param(d, "MLFeedbackConnectorConfigId").update(Required=True)),
    ("ObjectDetectionARMv7", lambda d: _param(d, "LocalInferenceServiceTimeoutSeconds").update(Default="0")),
    ("ObjectDetectionx86-64", lambda d: d["Parameters"].append(
        {"Name": "GPUAcceleration", "Required": True, "Type": "string", "AllowedValues": GPU_ALLOWED,
         "ConsoleDisplayName": "x", "Description": "x"})),
    (JETSON, lambda d: d["Parameters"].remove(_param(d, "GPUAcceleration"))),
    (JETSON, lambda d: _param(d, "GPUAcceleration").update(AllowedValues=["CPU", "GPU", "AUTO"])),
    ("ObjectDetectionARMv7", lambda d: d.update(ConnectorArn=SEED_ARNS["ObjectDetectionx86-64"])),
])
def test_connector_checker_catches_mistakes(variant, mutate):
    assert connector_problems(_broken(connector_path(variant), mutate), variant)


def _v1_env(doc):
    return doc["Functions"][0]["FunctionConfiguration"]["Environment"]


@pytest.mark.parametrize("mutate_fn, mutate_res", [
    (lambda d: d["Functions"][0]["FunctionConfiguration"].update(Executable="lambda_function.handler"), None),
    (lambda d: d["Functions"][0]["FunctionConfiguration"].update(Pinned=False), None),
    (lambda d: d["Functions"][0]["FunctionConfiguration"].update(EncodingType="json"), None),
    (lambda d: d["Functions"][0]["FunctionConfiguration"].update(Pined=True), None),
    (lambda d: _v1_env(d)["Variables"].update(LocalInferenceServiceName="-bad"), None),
    (lambda d: _v1_env(d)["Variables"].pop("LocalInferenceServiceMemoryLimitKB"), None),
    (lambda d: _v1_env(d)["ResourceAccessPolicies"][0].update(Permission="rw"), None),
    (lambda d: d["Functions"][0]["FunctionConfiguration"].update(Timeout=10), None),
    (None, lambda d: d["Resources"][0]["ResourceDataContainer"]["S3MachineLearningModelResourceData"].update(
        DestinationPath="/elsewhere")),
    (None, lambda d: d["Resources"][0].update(Id="other-resource")),
])
def test_v1_checker_catches_mistakes(mutate_fn, mutate_res):
    functions, resources = V1_PAIRS[0]
    fdoc = _broken(functions, mutate_fn or (lambda d: None))
    rdoc = _broken(resources, mutate_res or (lambda d: None))
    assert v1_problems(fdoc, rdoc)


def test_v1_nocontainer_checker_catches_permission():
    functions, resources = V1_PAIRS[1]
    fdoc = _broken(functions, lambda d: _v1_env(d)["ResourceAccessPolicies"][0].update(Permission="ro"))
    assert v1_problems(fdoc, load(resources))
    rdoc = _broken(resources, lambda d: d["Resources"][0]["ResourceDataContainer"][
        "S3MachineLearningModelResourceData"].pop("OwnerSetting"))
    assert v1_problems(load(functions), rdoc)


@pytest.mark.parametrize("mutate_src, mutate_recipe", [
    (lambda d: d["componentLambdaParameters"].update(pinned=False), None),
    (lambda d: d["componentLambdaParameters"]["environmentVariables"].update(
        LocalInferenceServiceTimeoutSeconds="0"), None),
    (lambda d: d["componentLambdaParameters"].update(InputPayloadEncodingType="binary"), None),
    (lambda d: d.update(lambdaArn="arn:aws:lambda:region:account-id:function:ObjectDetectionConnector:$LATEST"),
     None),
    (None, lambda d: d["Lifecycle"]["setenv"].update(AWS_GREENGRASS_LAMBDA_FUNCTION_HANDLER="x.y")),
    (None, lambda d: d["ComponentConfiguration"]["DefaultConfiguration"]["lambdaExecutionParameters"][
        "EnvironmentVariables"].pop("MLModelResourceId")),
    (None, lambda d: d["ComponentDependencies"].pop("aws.greengrass.LambdaLauncher")),
    (None, lambda d: d["ComponentConfiguration"]["DefaultConfiguration"].update(
        containerMode="GreengrassContainer")),
])
def test_v2_checker_catches_mistakes(mutate_src, mutate_recipe):
    src = _broken(V2 / "lambda-function-recipe-source.json", mutate_src or (lambda d: None))
    recipe = _broken(V2 / "recipe.yaml", mutate_recipe or (lambda d: None))
    assert v2_problems(src, recipe)


def test_client_lambda_reaches_the_connector_through_its_arn():
    """A user Lambda maps ServiceName -> the connector Lambda's ARN with GG_ML_INFERENCE_FUNCTION_ARNS."""
    from greengrass_machine_learning_sdk.inference import parse_function_arns, service_address
    client = load(V1 / "client-function-definition.json")["Functions"][0]
    variables = client["FunctionConfiguration"]["Environment"]["Variables"]
    connector = load(V1 / "function-definition.json")["Functions"][0]
    service = connector["FunctionConfiguration"]["Environment"]["Variables"]["LocalInferenceServiceName"]
    mapping = parse_function_arns(variables["GG_ML_INFERENCE_FUNCTION_ARNS"])
    assert mapping == {service: connector["FunctionArn"]}
    assert service_address("object-detection", service, "region", variables) == connector["FunctionArn"]


def test_device_site_packages_match_the_runtime_override():
    """A `--deps device` package imports NumPy/OpenCV from the device's venv of the same Python."""
    for doc in (V1 / "function-definition.json", V1 / "jetson-gpu-nocontainer" / "function-definition.json"):
        conf = load(doc)["Functions"][0]["FunctionConfiguration"]
        site = conf["Environment"]["Variables"]["GG_ML_SITE_PACKAGES"]
        assert "/lib/{}/site-packages".format(conf["FunctionRuntimeOverride"]) in site, doc


def test_v2_standalone_component_recipe():
    recipe = load(V2 / "standalone-component-recipe.yaml")
    assert recipe["ComponentType"] == "aws.greengrass.generic"
    assert value_problems(recipe["ComponentConfiguration"]["DefaultConfiguration"]["Parameters"],
                          where="V2 standalone") == []
    scripts = {"amd64": "install-x86_64.sh", "aarch64": "install-aarch64.sh", "arm": "install-armv7.sh"}
    seen = set()
    for manifest in recipe["Manifests"]:
        arch = manifest["Platform"]["architecture"]
        seen.add(arch)
        install = manifest["Lifecycle"]["Install"]["Script"]
        assert "scripts/install/" + scripts[arch] in install
        assert (ROOT / "scripts" / "install" / scripts[arch]).exists()
        run = manifest["Lifecycle"]["Run"]["Script"]
        assert "-m connector serve --config" in run and "GG_ML_IPC_FILE=" in run
    assert seen == set(scripts)
