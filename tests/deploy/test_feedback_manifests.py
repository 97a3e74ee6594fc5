"""manifests/feedback: the feedback service as its own Lambda (V1 documents, V2 import and deployment)."""
import importlib
import json
from pathlib import Path

from connector.feedback import config as fc

FEEDBACK = Path(__file__).resolve().parents[2] / "manifests" / "feedback"


def load(name):
    return json.loads((FEEDBACK / name).read_text())


def test_v1_documents_agree_and_their_parameters_load():
    lam = load("greengrass-v1/lambda-function.json")
    fn = load("greengrass-v1/function-definition.json")["Functions"][0]
    conf = fn["FunctionConfiguration"]
    assert conf["Executable"] == lam["Handler"] and conf["Pinned"] is True
    assert conf["EncodingType"] == "binary"  # the SDK sends the image bytes as the body
    module, _, name = lam["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
    variables = conf["Environment"]["Variables"]
    params = fc.parse_parameters(variables, environ={})
    assert params.spool_directory == variables["FeedbackSpoolDirectory"]
    # The spool lives on a local volume the function may write.
    resource = load("greengrass-v1/resource-definition.json")["Resources"][0]
    assert resource["ResourceDataContainer"]["LocalVolumeResourceData"]["DestinationPath"] == params.spool_directory
    assert conf["Environment"]["ResourceAccessPolicies"] == [{"ResourceId": resource["Id"], "Permission": "rw"}]
    subjects = {s["Subject"] for s in load("greengrass-v1/subscription-definition.json")["Subscriptions"]
                if s["Source"] == fn["FunctionArn"]}
    assert subjects == {"feedback/message/prediction", "feedback/message/status"}


def test_v2_import_and_deployment():
    source = load("greengrass-v2/lambda-function-recipe-source.json")
    params = source["componentLambdaParameters"]
    assert params["pinned"] is True and params["inputPayloadEncodingType"] == "binary"
    fc.parse_parameters(params["environmentVariables"], environ={})
    deployment = load("greengrass-v2/deployment.json")["components"]
    assert deployment[source["componentName"]]["componentVersion"] == source["componentVersion"]
    merge = json.loads(deployment["aws.greengrass.LegacySubscriptionRouter"]["configurationUpdate"]["merge"])
    routes = {(s["source"], s["subject"]) for s in merge["subscriptions"].values()}
    assert routes == {("component:" + source["componentName"], "feedback/message/prediction"),
                      ("component:" + source["componentName"], "feedback/message/status")}


def test_feedback_lambda_is_created_with_a_runtime_aws_still_accepts():
    """AWS Lambda blocks python3.8 for new functions; the device runs the FunctionRuntimeOverride."""
    from tests.deploy.test_manifests import LAMBDA_CREATE_RUNTIMES
    lam = json.loads((FEEDBACK / "greengrass-v1" / "lambda-function.json").read_text())
    assert lam["Runtime"] in LAMBDA_CREATE_RUNTIMES
    fn = json.loads((FEEDBACK / "greengrass-v1" / "function-definition.json").read_text())
    assert fn["Functions"][0]["FunctionConfiguration"]["FunctionRuntimeOverride"] in ("python3.7", "python3.8")
