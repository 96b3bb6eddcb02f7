"""MTCNN's proposal (PNet), refinement (RNet) and output (ONet) networks from the mtcnn wheel (Keras 3,
subclassed), and ONet frozen to a TF1 GraphDef. Data: scikit-image's lfw_subset (100 faces, 100
non-faces, 25x25 gray), degraded per sample (lower resolution, contrast, noise: the small, poor crops a
detector cascade feeds these nets) so that the face/non-face ROC AUC is not pinned at 1.0. PNet is fully
convolutional; here it scores 12x12 windows, the size it was trained on (one output cell each)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from zoo.core import CACHE, Framework, FrozenGraph, Samples, Split, ZooModel, import_from, rng
from zoo.metrics import roc_auc, sqnr_db

WHEEL = "mtcnn==1.0.0"
CALIBRATION_PER_CLASS = 40  # of lfw_subset's 100 faces and 100 non-faces; the other 60 + 60 evaluate
SPLIT_SEED = 20240101  # the fixed shuffle that splits lfw_subset between calibration and evaluation
OUTPUT_SIZES = {4: "box", 10: "landmarks", 2: "face"}  # outputs told apart by their width
TF1_OUTPUTS = ("box", "landmarks", "face_prob")  # Identity nodes of the frozen ONet, in its output order


@functools.cache
def _lfw_split(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The faces and the non-faces of ``split`` (25x25, 0..255): a fixed shuffle of each class, the
    first CALIBRATION_PER_CLASS for calibration, the rest for evaluation."""
    from skimage import data

    images = data.lfw_subset().astype(np.float32) * 255
    order = np.random.default_rng(SPLIT_SEED)
    faces, others = images[order.permutation(100)], images[100 + order.permutation(100)]
    part = slice(None, CALIBRATION_PER_CLASS) if split is Split.CALIBRATION else slice(CALIBRATION_PER_CLASS, None)
    return faces[part], others[part]


def _crop(split: Split, index: int) -> tuple[np.ndarray, bool]:
    """Sample ``index``: faces and non-faces alternate (any prefix is balanced; past the split's 2 x 40 or
    2 x 60 images they come round again, degraded differently); the same seeded
    degradation for both classes, so it carries no label: mirror, down-sampling to 12-25 px,
    contrast 0.4-1 with a brightness shift, Gaussian noise up to sigma 16 (of 255)."""
    from PIL import Image

    faces, others = _lfw_split(split)
    is_face = index % 2 == 0
    pool = faces if is_face else others
    image = pool[(index // 2) % len(pool)]
    generator = rng(split, f"mtcnn/{index}")
    if generator.random() < 0.5:
        image = image[:, ::-1]
    side = int(generator.integers(12, 26))
    image = np.asarray(Image.fromarray(np.ascontiguousarray(image), "F").resize((side, side), Image.BILINEAR))
    contrast = generator.uniform(0.4, 1.0)
    image = (image - image.mean()) * contrast + image.mean() + generator.uniform(-40, 40) * (1 - contrast)
    image = image + generator.normal(0, generator.uniform(0, 16), image.shape)
    return np.clip(image, 0, 255).astype(np.float32), is_face


def _sample(split: Split, index: int, size: int) -> tuple[np.ndarray, bool]:
    """The crop resized to the net's input, gray as three channels, normalized as the wheel's
    mtcnn.utils.images.normalize_images does ((x - 127.5) / 128; HWC, no transpose: the nets'
    Permute layer does Caffe's): (1, size, size, 3) float32."""
    from PIL import Image

    image, is_face = _crop(split, index)
    resized = np.asarray(Image.fromarray(image, "F").resize((size, size), Image.BILINEAR), np.float32)
    normalized = (resized - 127.5) / 128
    return np.repeat(normalized[None, :, :, None], 3, axis=-1).astype(np.float32), is_face


def _by_role(outputs: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Each output stacked over the samples, named by its width (exporters may reorder outputs)."""
    stacked = {}
    for position in range(len(outputs[0])):
        values = np.concatenate([np.asarray(o[position], np.float64).reshape(1, -1) for o in outputs])
        stacked[OUTPUT_SIZES[values.shape[1]]] = values
    return stacked


class MtcnnRNet(ZooModel):
    name = "mtcnn_rnet"
    float_floor = ("auc", 0.9)  # what the float model reaches on this data at least
    framework = Framework.TF2
    wheels = (WHEEL,)
    task = "MTCNN RNet (Keras 3, subclassed): face/non-face and box offsets of 24x24 LFW crops"
    calibration_size = 2 * CALIBRATION_PER_CLASS
    evaluation_size = 2 * (100 - CALIBRATION_PER_CLASS)
    size = 24
    network = ("mtcnn.network.rnet", "RNet", "rnet.lz4")
    threshold = 0.7  # the wheel's threshold_rnet

    def load(self):
        """The network as the wheel's stage builds it: build(), then its joblib/lz4 weights."""
        module, cls, weights = self.network
        model = getattr(import_from(WHEEL, module), cls)()
        model.build()
        model.set_weights(import_from(WHEEL, "mtcnn.utils.tensorflow").load_weights(weights))
        return model

    def samples(self, split: Split, n: int) -> Samples:
        drawn = [_sample(split, i, self.size) for i in range(n)]
        return Samples([(image,) for image, _ in drawn], [is_face for _, is_face in drawn])

    def score(self, outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]], samples: Samples) -> dict[str, float]:
        """ROC AUC of the face probability against the truth; accuracy and agreement with float of
        the face decision at the wheel's threshold; SQNR of the regressions against float."""
        candidate, float_ = _by_role(outputs), _by_role(reference)
        truth = np.asarray(samples.truth, bool)
        decided, float_decided = candidate["face"][:, 1] >= self.threshold, float_["face"][:, 1] >= self.threshold
        metrics = {
            "auc": roc_auc(candidate["face"][:, 1], truth),
            "accuracy": float(np.mean(decided == truth)),
            "agreement": float(np.mean(decided == float_decided)),
            "box_sqnr_db": sqnr_db(candidate["box"], float_["box"]),
        }
        if "landmarks" in candidate:
            metrics["landmarks_sqnr_db"] = sqnr_db(candidate["landmarks"], float_["landmarks"])
        return metrics


class MtcnnPNet(MtcnnRNet):
    name = "mtcnn_pnet"
    float_floor = ("auc", 0.85)  # what the float model reaches on this data at least
    task = "MTCNN PNet (Keras 3, subclassed, fully convolutional): face/non-face and box offsets of 12x12 LFW windows"
    size = 12
    network = ("mtcnn.network.pnet", "PNet", "pnet.lz4")
    threshold = 0.6  # the wheel's threshold_pnet


class MtcnnONet(MtcnnRNet):
    name = "mtcnn_onet"
    float_floor = ("auc", 0.9)  # what the float model reaches on this data at least
    task = "MTCNN ONet (Keras 3, subclassed): face/non-face, box offsets and landmarks of 48x48 LFW crops"
    size = 48
    network = ("mtcnn.network.onet", "ONet", "onet.lz4")
    threshold = 0.8  # the wheel's threshold_onet


class MtcnnONetTf1(MtcnnONet):
    """The same ONet as vai_q_tensorflow users bring it: a frozen GraphDef with a free batch."""

    name = "mtcnn_onet_tf1"
    framework = Framework.TF1
    task = "MTCNN ONet as a frozen TF1 GraphDef: face/non-face, box offsets and landmarks of 48x48 LFW crops"

    def load(self) -> FrozenGraph:
        path = CACHE / self.name / "onet_frozen.pb"
        if not path.exists():
            self._freeze(super().load(), path)
        return FrozenGraph(path, ["input"], list(TF1_OUTPUTS), [(None, self.size, self.size, 3)])

    def _freeze(self, model, path: Path) -> None:
        """A tf.function of a fixed signature, named Identity outputs, variables folded to constants;
        written through a temporary file so that a concurrent reader never sees half a graph."""
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        @tf.function(input_signature=[tf.TensorSpec((None, self.size, self.size, 3), tf.float32, name="input")])
        def forward(x):
            return [tf.identity(y, name=n) for y, n in zip(model(x, training=False), TF1_OUTPUTS, strict=True)]

        frozen = convert_variables_to_constants_v2(forward.get_concrete_function())
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_bytes(frozen.graph.as_graph_def().SerializeToString())
        scratch.replace(path)


MODELS = [MtcnnPNet(), MtcnnRNet(), MtcnnONet(), MtcnnONetTf1()]
