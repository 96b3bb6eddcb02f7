"""rq's measuring stick: trained models from registry wheels, each with realistic data and a metric.

One module per model under ``zoo/models/``; ``zoo.registry`` lists them; ``python -m zoo.run``
(``nox -s zoo``) quantizes every model with rq and with ONNX Runtime's quantizer and writes
``bench/results/zoo.md``. See zoo/README.md.
"""
