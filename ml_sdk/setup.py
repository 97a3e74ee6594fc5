"""The drop-in greengrass_machine_learning_sdk alone: standard library only, for machines (and
Greengrass Lambdas) that call the inference or feedback service without running it."""
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))

setup(
    name="greengrass-machine-learning-sdk",
    version="0.1.0",
    description="Drop-in greengrass_machine_learning_sdk (AWS 1.1.0 API) for the ML object-detection "
                "connector and the ML feedback service: Greengrass V1/V2 local IPC or a standalone host",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.7",
    packages=["greengrass_machine_learning_sdk"],
    install_requires=[],
    classifiers=["Programming Language :: Python :: 3", "Operating System :: POSIX :: Linux"],
)
