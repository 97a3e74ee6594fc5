"""Call the running inference service through the ML SDK, as user code would, for the demo.

usage: python scripts/demo_client.py OUTDIR IMAGE...
Prints each image's predictions and writes an annotated copy to OUTDIR.
"""
import os
import sys

import cv2
import numpy as np

import greengrass_machine_learning_sdk as ml
from connector.tools.draw import annotate

LABELS = ("circle", "square", "triangle")


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out_dir, paths = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    client = ml.client("inference")
    for path in paths:
        with open(path, "rb") as f:
            content = bytearray(f.read())
        resp = client.invoke_inference_service(AlgoType="object-detection", ServiceName="objectDetection",
                                               ContentType="image/jpeg", Body=content)
        predictions = eval(resp["Body"].read().decode("utf-8"))["prediction"]  # as the seed's example does
        shown = [p for p in predictions if p[1] >= 0.3]
        print("{}: {} object(s)".format(path, len(shown)))
        for cls, score, x0, y0, x1, y1 in shown:
            print("  {:<8} {:.2f}  box ({:.3f}, {:.3f}) - ({:.3f}, {:.3f})".format(
                LABELS[cls] if cls < len(LABELS) else cls, score, x0, y0, x1, y1))
        image = cv2.imdecode(np.frombuffer(bytes(content), np.uint8), cv2.IMREAD_COLOR)
        target = os.path.join(out_dir, "annotated-" + os.path.basename(path))
        cv2.imwrite(target, annotate(image, predictions, LABELS))
        print("  annotated copy: {}".format(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
