"""Edge object-detection inference service, successor of the Greengrass V1 ML Object Detection connector."""
import os as _os
import site as _site

__version__ = "0.1.0"

# A Lambda package built with `--deps device` (connector/tools/deploy.py) carries no NumPy, OpenCV or
# model runtime: GG_ML_SITE_PACKAGES names the device's site-packages that provide them. Done here
# so that the Lambda entry and the worker processes it starts (which inherit the variable) agree.
for _path in _os.environ.get("GG_ML_SITE_PACKAGES", "").split(_os.pathsep):
    if _path and _os.path.isdir(_path):
        _site.addsitedir(_path)
