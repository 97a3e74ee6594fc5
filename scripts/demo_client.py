"""Call the running inference service through the ML SDK, as user code would, for the demo.

usage: python scripts/demo_client.py [--min-score S] OUTDIR IMAGE...
Prints, per image, how many rows the answer has (every detection above the model's own floor), how
many score at or above S (default 0.3) and those rows; writes a copy with them drawn to OUTDIR.
"""
import argparse
import os
import sys

import cv2
import numpy as np

import greengrass_machine_learning_sdk as ml
from connector.tools.draw import DEFAULT_MIN_SCORE, annotate, drawn_summary

LABELS = ("circle", "square", "triangle")


def score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be a number from 0 to 1, got {!r}".format(text))
    return value


def main() -> int:
    parser = argparse.ArgumentParser(prog="demo_client.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--min-score", type=score, default=DEFAULT_MIN_SCORE, metavar="S",
                        help="draw and list the rows scoring at least S (default {:g}); the answer "
                             "itself has every row above the model's own floor".format(DEFAULT_MIN_SCORE))
    parser.add_argument("out_dir", metavar="OUTDIR")
    parser.add_argument("paths", nargs="+", metavar="IMAGE")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    client = ml.client("inference")
    for path in args.paths:
        with open(path, "rb") as f:
            content = bytearray(f.read())
        resp = client.invoke_inference_service(AlgoType="object-detection", ServiceName="objectDetection",
                                               ContentType="image/jpeg", Body=content)
        predictions = eval(resp["Body"].read().decode("utf-8"))["prediction"]  # as the seed's example does
        print("{}: {}".format(path, drawn_summary(predictions, args.min_score)))
        for cls, p, x0, y0, x1, y1 in predictions:
            if p >= args.min_score:
                print("  {:<8} {:.2f}  box ({:.3f}, {:.3f}) - ({:.3f}, {:.3f})".format(
                    LABELS[cls] if cls < len(LABELS) else cls, p, x0, y0, x1, y1))
        image = cv2.imdecode(np.frombuffer(bytes(content), np.uint8), cv2.IMREAD_COLOR)
        target = os.path.join(args.out_dir, "annotated-" + os.path.basename(path))
        cv2.imwrite(target, annotate(image, predictions, LABELS, args.min_score))
        print("  annotated copy: {}".format(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
