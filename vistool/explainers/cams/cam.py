"""CAM (Zhou et al., 2016): the channels weighted by the linear classifier's weights of the
class; defined only where global average pooling and a linear classifier follow the layer
(there it equals Grad-CAM up to scale)."""

from . import gradcam
from ._base import CamMethod

METHOD = CamMethod(
    "cam", gradcam.METHOD.maps, "the classifier's weights of the class (Zhou et al.; needs a "
    "GAP + linear head)", gradients=True, head="require", class_target=True, eigen_smooth=True,
    reference="torchcam.methods.CAM (its map through a ReLU: torch-cam's has none), and a "
    "hand computation (tests/test_cam.py)")
