"""Edge object-detection inference service, successor of the Greengrass V1 ML Object Detection connector."""

__version__ = "0.1.0"
