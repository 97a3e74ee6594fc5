"""Edge object-detection inference service, successor of the Greengrass V1 ML Object Detection
connector. The groups, each a package whose ``__init__`` lists its modules (docs/architecture.md
draws how a request flows through them):

* :mod:`.model`       - bytes in, detections out, in one process (directory, formats, engine, backends)
* :mod:`.supervision` - the inference worker processes and their supervisors
* :mod:`.service`     - the per-request service: outcomes, latency, metrics
* :mod:`.ipc`         - the Greengrass V1 local IPC: protocol, host, client, Lambda runtime loop
* :mod:`.feedback`    - the ML Feedback service (samples to S3 / a directory, MQTT messages)
* :mod:`.standalone`  - running without Greengrass: serve, host, attach, GGRouter
* :mod:`.tools`       - doctor, check-model, migrate-v1, packaging: never imported by the service
* :mod:`.demos`       - the bundled demo detectors

and at the top: :mod:`.cli` and :mod:`.__main__` (``python -m connector``) and
:mod:`.lambda_function` (the Greengrass handler), the entry points; :mod:`.params` (the connector
parameters), :mod:`.settings` (every environment variable), :mod:`.errors`, :mod:`.config_files`
(untrusted YAML/JSON), :mod:`.files` (files others may have touched), :mod:`.logs` and
:mod:`.counters`.
"""
import site as _site

from . import settings as _settings

__version__ = "0.1.0"

# A Lambda package built with `--deps device` (connector/tools/deploy.py) carries no NumPy, OpenCV
# or model runtime: GG_ML_SITE_PACKAGES names the device's site-packages that provide them. Done
# here so that the Lambda entry and the worker processes it starts (which inherit the variable)
# agree. site.addsitedir runs the directory's *.pth files, so a directory another user could write
# is refused (settings.code_directories): importing the package then fails with that one line.
try:
    _site_packages = _settings.code_directories("GG_ML_SITE_PACKAGES")
except _settings.ParameterError as _exc:
    raise ImportError(str(_exc)) from None
for _path in _site_packages:
    _site.addsitedir(_path)
