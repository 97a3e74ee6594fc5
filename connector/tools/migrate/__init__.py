"""`python -m connector migrate-v1`: a Greengrass V1 device's group, turned into this project's set-up.

Greengrass V1 reached its end of support on 2026-10-07: no V1 group can be deployed or changed
again, but cores keep running what they last received. This package reads that (the core's
``group.json`` or the definition versions saved with the AWS CLI) and writes the parameter files for
``serve``, a Greengrass V2 deployment, the MQTT allow-list and a report of what does not map.
Modules, one idea each:

* :mod:`.source`  - reading one untrusted JSON file within its caps (size, depth, duplicate keys)
* :mod:`.group`   - recognising a document's kind from its content; the typed V1 entries
* :mod:`.topics`  - V1 subscriptions to MQTT topic filters for the router's allow-list
* :mod:`.plan`    - what maps: the detector's parameters (model path resolved), the V2 target
* :mod:`.feedback_map` - the ML Feedback connector, mapped to this project's feedback service
* :mod:`.pointers` - what does not map, each with a one-line pointer (V2 equivalents)
* :mod:`.render`  - the written texts: params.yaml, feedback.yaml, deployment.json, report.txt
* :mod:`.writer`  - writing them under --out only, with fixed names, never through a link
* :mod:`.command` - the command line (arguments, exit status, the summary on stdout)

Runtime code: Python 3.7+, standard library and PyYAML only (no boto3: nothing here calls AWS).
"""
