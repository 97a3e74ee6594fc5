"""Write a few synthetic test photos (circles, squares, triangles on clutter) for demos and benchmarks.

usage: python scripts/make_samples.py OUTDIR [COUNT]
"""
import os
import sys

import cv2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes_dataset import make_sample  # noqa: E402

SIZES = ((640, 480), (1280, 720), (512, 512), (800, 600))


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 3
    os.makedirs(out, exist_ok=True)
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        rgb, _ = make_sample(1000 + i, w, h)
        path = os.path.join(out, "sample-{}-{}x{}.jpg".format(i, w, h))
        cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
