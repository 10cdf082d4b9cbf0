"""Transform families: parameters to sampling grids.

Every family is a small class with ``num_params``, ``identity_params(batch_size)``, ``grid(params, size)``,
``map_points(params, points)`` and, for the matrix families, ``matrix(params)`` (the normalised ``src_from_dst``
matrix), ``params_from_matrix`` and ``inverse_params``.

========================  ======  ============================================================
family                    params  meaning
========================  ======  ============================================================
:class:`Affine`           6       the paper's ``A_theta``, row-major 2x3
:class:`Attention`        3       ``(s, tx, ty)``: crop, translate, isotropic scale
:class:`Similarity`       4       ``(angle, log_scale, tx, ty)``, rotation true in pixel space
:class:`Translation`      2       ``(tx, ty)``
:class:`Projective`       8       3x3 homography, last entry fixed to 1
:class:`ThinPlateSpline`  2K      source positions of K control points at fixed target points
:class:`Affine3D`         12      row-major 3x4, for volumes
========================  ======  ============================================================
"""

from torchstn.transforms._base import MatrixTransform, Transform
from torchstn.transforms._matrix import Affine, Affine3D, Attention, Projective, Similarity, Translation
from torchstn.transforms._tps import ThinPlateSpline

__all__ = [
    "Affine",
    "Affine3D",
    "Attention",
    "MatrixTransform",
    "Projective",
    "Similarity",
    "ThinPlateSpline",
    "Transform",
    "Translation",
]
