"""Packaging: the connector service (with the drop-in greengrass_machine_learning_sdk).

The SDK alone, for machines that only call the service, is ml_sdk/setup.py (no dependencies)."""
from setuptools import find_packages, setup

RUNTIME = {
    # dlr 1.6.0 is the last x86_64 wheel that carries libdlr.so; elsewhere the pure-Python
    # releases load the libdlr.so that Neo ships in the model directory.
    "dlr": ["dlr==1.6.0; platform_machine == 'x86_64'",
            "dlr>=1.6,<1.11; platform_machine != 'x86_64'"],
    # The range scripts/ort_compat.py was run with: 1.18.0 on Python 3.8 (older releases cannot
    # read the IR version 10 files today's exporters write, e.g. the GluonCV exports in
    # tests/models) to 1.32.0 on Python 3.11; same predictions on every model.
    # Python 3.7 (Greengrass V1's, Amazon Linux 2's) has no wheel of these releases: DLR serves there.
    "onnx": ["onnxruntime>=1.18,<1.33; python_version >= '3.8'"],
    "feedback": ["boto3", "paho-mqtt"],
}
DEV = [
    "pytest>=7", "pytest-timeout", "hypothesis", "pillow", "pycocotools", "vermin", "onnx",
    # the feedback tests: a real S3 API server that checks signatures, and the MQTT/S3 clients
    "moto[server]>=5", "boto3", "paho-mqtt>=1.6",
    # manifests/kubernetes validated offline against the Kubernetes schemas (tests/deploy/test_kubernetes.py)
    "kubernetes-validate",
    "torch==2.13.0",  # training the demo detectors only; the runtime never imports it
]

# bench/perf.py's peer service only (bench/peer_fastapi.py); neither tests nor the runtime use it.
BENCH = ["fastapi", "uvicorn"]

setup(
    name="ml-object-detection-connector",
    version="0.1.0",
    description="Edge object-detection inference service: successor of the Greengrass V1 "
                "ML Object Detection connector",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.7",
    packages=find_packages(include=["connector", "connector.*"])
    + ["greengrass_machine_learning_sdk"],
    package_dir={"greengrass_machine_learning_sdk": "ml_sdk/greengrass_machine_learning_sdk"},
    package_data={"connector.demos": ["*/*.onnx", "*/labels.txt", "*/model.yaml",
                                       # the Neo-compiled demos (scripts/tools/make_test_models.sh --demos)
                                       "*/compiled.*", "*/compiled_model.json", "*/model-shapes.json",
                                       "*/hyperparams.json", "*/MANIFEST"]},
    # PyPI has no armv7l OpenCV wheel and pip does not count Debian's python3-opencv as this
    # distribution, so on ARMv7 OpenCV comes from Debian (scripts/install/install-armv7.sh).
    install_requires=["numpy>=1.16", "pyyaml>=5.1",
                      "opencv-python-headless>=4.2; platform_machine != 'armv7l'"],
    extras_require=dict(RUNTIME, dev=DEV, bench=BENCH,
                        all=sorted({r for reqs in RUNTIME.values() for r in reqs} | set(DEV))),
    entry_points={"console_scripts": ["gg-ml-connector=connector.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Operating System :: POSIX :: Linux"],
)
