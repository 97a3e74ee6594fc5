"""Run the seed's example Lambda unchanged, as a Greengrass Lambda process would import it.

The example reads the absolute path /test_img/test.jpg; only that path is redirected (to argv[1])
so the test needs no write access to /. After the first answer the process exits: the example
re-arms a 10 s Timer forever.
"""
import builtins
import logging
import os
import runpy
import sys

image = sys.argv[1]
real_open = builtins.open


def redirecting_open(file, *args, **kwargs):
    return real_open(image if file == "/test_img/test.jpg" else file, *args, **kwargs)


builtins.open = redirecting_open
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
# An exception in the example (eval included) propagates out of run_path: non-zero exit.
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "example_lambda.py"))
print("EXAMPLE_DONE")
sys.stdout.flush()
os._exit(0)
