"""Tools for operators and deployers. The service never imports anything here.

* :mod:`.doctor`      - ``python -m connector doctor``: can the service run on this machine, and why not
* :mod:`.elf`         - symbol versions of ELF shared objects, for the doctor's library checks
* :mod:`.check_model` - ``python -m connector check-model DIR``: what is recognised, one timed inference
* :mod:`.deploy`      - ``python -m connector.tools.deploy``: memory sizing, the Greengrass Lambda package
* :mod:`.draw`        - annotated copies of images (``python -m connector infer --draw``)
* :mod:`.migrate`     - ``python -m connector migrate-v1``: a Greengrass V1 group to this project's set-up
"""
