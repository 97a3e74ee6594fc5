"""The drop-in greengrass_machine_learning_sdk alone: standard library only, for machines (and
Greengrass Lambdas) that call the inference or feedback service without running it.

Its version is the AWS SDK API version it implements, read from the module's ``__version__`` (the
single source): what `pip show` says is what `ml.__version__` says, and a user who pinned AWS's
greengrass-machine-learning-sdk 1.1.0 recognises the API. A fix of ours that keeps that API would be
released as a post-release (1.1.0.post1) by changing ``__version__``.
"""
import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def sdk_version() -> str:
    # Read, not imported: building must not execute the package (nor need what it imports).
    path = os.path.join(HERE, "greengrass_machine_learning_sdk", "__init__.py")
    with open(path, encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    if match is None:
        raise RuntimeError("no __version__ = \"...\" line in " + path)
    return match.group(1)


VERSION = sdk_version()

setup(
    name="greengrass-machine-learning-sdk",
    version=VERSION,
    description="Drop-in greengrass_machine_learning_sdk (AWS {} API) for the ML object-detection "
                "connector and the ML feedback service: Greengrass V1/V2 local IPC or a standalone "
                "host".format(VERSION),
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.7",
    packages=["greengrass_machine_learning_sdk"],
    install_requires=[],
    classifiers=["Programming Language :: Python :: 3", "Operating System :: POSIX :: Linux"],
)
