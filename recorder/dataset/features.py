"""Which LeRobot features the farm records, and the checks of every frame against them."""

from __future__ import annotations

from typing import Any

import numpy as np

from recorder.dataset.layout import DEFAULT_FEATURES, camera_name

NUMERIC = {"float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}


def validate_features(features: dict[str, dict]) -> dict[str, dict]:
    """The user's features without LeRobot's default ones; raises ValueError when wrong."""
    result = {}
    for key, feature in features.items():
        if key in DEFAULT_FEATURES:
            continue
        dtype, shape = feature.get("dtype"), feature.get("shape")
        if dtype == "video":
            if shape is None or len(shape) != 3 or shape[2] != 3:
                raise ValueError(f"feature {key!r}: a video feature has shape (height, width, "
                                 f"3), got {shape}")
            camera_name(key)
        elif dtype in ("image", "string"):
            raise ValueError(f"feature {key!r}: dtype {dtype!r} is not recorded by the farm; "
                             "cameras are 'video' features, the task goes in frame['task']")
        elif dtype not in NUMERIC or shape is None or len(shape) != 1:
            raise ValueError(f"feature {key!r}: expected dtype 'video' or a numeric dtype "
                             f"({', '.join(sorted(NUMERIC))}) with shape (n,), got {dtype!r} "
                             f"{shape}")
        result[key] = {**feature, "shape": list(shape), "names": feature.get("names")}
    if not any(f["dtype"] == "video" for f in result.values()):
        raise ValueError("features name no camera: add at least one feature of dtype 'video'")
    return result


def checked_value(key: str, feature: dict, value: Any) -> np.ndarray:
    """value as the feature's array; raises ValueError naming the feature when it is not.

    Camera images are taken as they are (never copied): a (height, width, 3) uint8 array.
    """
    shape = tuple(feature["shape"])
    if feature["dtype"] == "video":
        if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.shape != shape:
            got = (value.shape, value.dtype) if isinstance(value, np.ndarray) \
                else type(value).__name__
            raise ValueError(f"add_frame: {key} must be a {shape} uint8 RGB array, got {got}")
        return value
    array = np.asarray(value, dtype=feature["dtype"])
    if array.shape != shape:
        raise ValueError(f"add_frame: {key} must have shape {shape}, got {array.shape}")
    return array
