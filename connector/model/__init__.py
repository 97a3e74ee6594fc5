"""The model in one process: image bytes in, detections out. Nothing here knows about requests,
workers or Greengrass; a worker process (connector.supervision) runs an :class:`engine.Engine`.

* :mod:`.directory`   - recognise a model directory (Neo/DLR or ONNX), read model.yaml and labels.txt
* :mod:`.contract`    - the input contract (name, shape, layout, dtype) read from the artefact itself
* :mod:`.formats`     - detector output formats: each one's shapes, how it is recognised and decoded
* :mod:`.imaging`     - JPEG/PNG bytes to pixels, refusing what could hurt (bombs, truncation, memory)
* :mod:`.preprocess`  - pixels to the model's input tensor (stretch or letterbox, mean/std, layout)
* :mod:`.postprocess` - decoded detections to the prediction document of SPEC section 3
* :mod:`.engine`      - :class:`Engine`: one loaded model; bytes -> document, with its timings
* :mod:`.artefacts`   - checks on native libraries before a runtime loads them (CPU, factory exports)
* :mod:`.backends`    - the model runtimes (DLR, ONNX Runtime) behind one small interface
"""
