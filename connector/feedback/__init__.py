"""The ML Feedback service: samples of what the model saw, sent to S3 / a local directory and MQTT.

It answers at ``arn:aws:lambda:<region>:aws:function:MLFeedback``, so the SDK's unchanged
``client('feedback').publish(...)`` works against it as against the AWS ML Feedback connector
(SPEC sections 6 and 6a). Modules, one idea each:

* :mod:`.config`      - ``FeedbackConfigurationMap``, ``RequestLimit`` and the spool/retry parameters
* :mod:`.sampling`    - the four sampling strategies, on probability lists and detection documents
* :mod:`.gate`        - optional detection-aware conditions, cooldown and budgets of a config
* :mod:`.spool`       - the durable on-disk queue every accepted sample goes through
* :mod:`.records`     - what a spool record must be before it is used (records are untrusted)
* :mod:`.destinations`- S3 (boto3) and a local directory (image plus a JSON sidecar)
* :mod:`.publisher`   - MQTT the Greengrass way: post_work to the GGRouter function
* :mod:`.ratelog`     - a log line repeated at most once a minute, with what it held back
* :mod:`.collector`   - :class:`FeedbackService`: accepting requests (the Lambda handler) and delivering them
* :mod:`.lambda_function` - the Greengrass Lambda entry point
* :mod:`.feeder`      - the object-detection connector's side: hand every answer over, never waiting

Runtime code: Python 3.7+, boto3 and paho-mqtt are imported only where used.
"""
