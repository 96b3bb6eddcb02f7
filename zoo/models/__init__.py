"""One module per zoo model (or per wheel): each defines ``MODELS``, a list of ZooModel instances.
Modules import nothing heavy at the top: torch, TensorFlow and the wheels load in ``load()``."""
