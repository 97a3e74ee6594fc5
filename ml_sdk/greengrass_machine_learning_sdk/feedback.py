"""``client('feedback')``: send a model input and its prediction to the ML Feedback service."""
from __future__ import annotations

import base64
import json
import logging
import os
import re
from typing import Any, Mapping, Optional

from ._args import body_bytes, required_arguments
from ._service import (GreengrassRuntimeException, GreengrassServiceClient,
                       GreengrassServiceMessage, error_message_of, error_type_of)
from .exception import GreengrassDependencyException
from .util import ValidationUtil

log = logging.getLogger(__name__)

PARAM_CONFIG_ID = "ConfigId"
PARAM_MODEL_INPUT = "ModelInput"
PARAM_MODEL_PREDICTION = "ModelPrediction"
PARAM_METADATA = "Metadata"

ERROR_STRING_INVALID_TYPE = "Argument {} must be of type {}"

CONFIG_ID_PATTERN_STRING = "^[a-zA-Z0-9][a-zA-Z0-9-]{1,62}$"
CONFIG_ID_PATTERN = re.compile(CONFIG_ID_PATTERN_STRING)

ENV_FUNCTION_ARN = "GG_ML_FEEDBACK_FUNCTION_ARN"


class GreengrassFeedbackException(Exception):
    """The ML Feedback service refused or failed the request (a ``Handled`` function error)."""

    def __init__(self, message: str, error_type: Optional[str] = None, payload: bytes = b"") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.payload = payload


def feedback_address(region: Optional[str], environ: Optional[Mapping[str, str]] = None) -> str:
    """``$GG_ML_FEEDBACK_FUNCTION_ARN`` when set, else the AWS ML Feedback connector's address."""
    env = os.environ if environ is None else environ
    explicit = (env.get(ENV_FUNCTION_ARN) or "").strip()
    if explicit:
        return explicit
    if not region:
        raise GreengrassDependencyException(
            "AWS_REGION is not set, so the ML Feedback address cannot be built (set AWS_REGION "
            "or {})".format(ENV_FUNCTION_ARN))
    return "arn:aws:lambda:{}:aws:function:MLFeedback".format(region)


class Client(object):
    """``greengrass_machine_learning_sdk.client('feedback')``."""

    FEEDBACK_CONNECTOR_ADDRESS_STR = "arn:aws:lambda:{}:aws:function:MLFeedback"

    def __init__(self, timeout: Optional[float] = None) -> None:
        ValidationUtil.validate_required_gg_interface()
        self._gg_service_client = GreengrassServiceClient(timeout=timeout)

    def publish(self, **kwargs: Any) -> None:
        """Send one sample to the ML Feedback service.

        :Keyword Arguments:
            * *ConfigId* (``str``) -- [REQUIRED] a config id of the feedback configuration map
            * *ModelInput* (``bytes`` or readable file) -- [REQUIRED] what the model was given
            * *ModelPrediction* (``list`` or ``dict``) -- [REQUIRED] what the model answered
            * *Metadata* (``dict``) -- extra metadata for the uploaded sample

        :raises ValueError: a missing or malformed argument
        :raises GreengrassFeedbackException: the feedback service refused the sample
        :raises GreengrassDependencyException: anything else failed
        """
        method = "Feedback.Client.publish"
        required_arguments(kwargs, (PARAM_CONFIG_ID, PARAM_MODEL_INPUT, PARAM_MODEL_PREDICTION),
                           method)
        config_id = kwargs[PARAM_CONFIG_ID]
        if not isinstance(config_id, str) or not CONFIG_ID_PATTERN.fullmatch(config_id):
            raise ValueError("Parameter {} must match: {}".format(
                PARAM_CONFIG_ID, CONFIG_ID_PATTERN_STRING))
        # An image classifier predicts a list of probabilities, an object detector a dict.
        model_prediction = kwargs[PARAM_MODEL_PREDICTION]
        if not isinstance(model_prediction, (dict, list)):
            raise ValueError(ERROR_STRING_INVALID_TYPE.format(PARAM_MODEL_PREDICTION, "dict or list"))
        metadata = kwargs.get(PARAM_METADATA)
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict):
            raise ValueError(ERROR_STRING_INVALID_TYPE.format(PARAM_METADATA, "dict"))
        try:
            context_json = json.dumps({"custom": {
                PARAM_CONFIG_ID: config_id,
                PARAM_MODEL_PREDICTION: model_prediction,
                PARAM_METADATA: metadata,
            }})
        except (TypeError, ValueError) as exc:
            raise ValueError("{} and {} must be JSON-serialisable: {}".format(
                PARAM_MODEL_PREDICTION, PARAM_METADATA, exc))
        context = base64.b64encode(context_json.encode("utf-8"))
        model_input = body_bytes(kwargs[PARAM_MODEL_INPUT], PARAM_MODEL_INPUT)

        try:
            output, _ = self._gg_service_client.call_found(
                lambda endpoint: feedback_address(endpoint.region),
                GreengrassServiceMessage(context, model_input))
        except GreengrassRuntimeException as exc:
            raise GreengrassDependencyException(str(exc))
        if output.error_response is not None:
            payload = output.error_response.payload
            raise GreengrassFeedbackException(error_message_of(payload), error_type_of(payload), payload)
        log.info("Successfully made request to ML Feedback connector.")
