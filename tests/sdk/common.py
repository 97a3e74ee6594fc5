"""What the SDK tests share: the SDK imported from ml_sdk/ (as a device has it, not installed), the
names they call, and the variables a Greengrass core sets (removed so that a test runs outside it)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.path.join(ROOT, "ml_sdk") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "ml_sdk"))

REGION = "eu-west-1"
ARN = "arn:aws:lambda:eu-west-1:aws:function:GG-ML-INF-object-detection-objectDetection"
FEEDBACK_ARN = "arn:aws:lambda:eu-west-1:aws:function:MLFeedback"
ARGS = dict(AlgoType="object-detection", ServiceName="objectDetection")
GREENGRASS_VARIABLES = ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "MY_FUNCTION_ARN", "GG_DAEMON_PORT",
                        "AWS_REGION", "GGC_MAX_INTERFACE_VERSION", "GG_ML_INFERENCE_FUNCTION_ARNS",
                        "GG_ML_FEEDBACK_FUNCTION_ARN", "GG_ML_IPC_FILE", "GG_ML_IPC_FAST")
