import numpy as np
import pytest

from recorder.capture.cameras.synthetic import SyntheticCamera


def test_deterministic_per_seed():
    a = SyntheticCamera("a", width=160, height=120, fps=30, seed=7)
    b = SyntheticCamera("b", width=160, height=120, fps=30, seed=7)
    c = SyntheticCamera("c", width=160, height=120, fps=30, seed=8)
    np.testing.assert_array_equal(a.frame_at(42), b.frame_at(42))
    assert not np.array_equal(a.frame_at(42), c.frame_at(42))


def test_content_moves_but_is_not_noise():
    camera = SyntheticCamera("a", width=320, height=240, fps=30, seed=1)
    first, later = camera.frame_at(0).astype(float), camera.frame_at(30).astype(float)
    assert first.shape == (240, 320, 3)
    # Moves: a second later the picture differs clearly.
    assert np.mean(np.abs(first - later)) > 3
    # Natural-looking: neighbouring pixels are strongly correlated, unlike random noise.
    left, right = first[:, :-1].ravel(), first[:, 1:].ravel()
    assert np.corrcoef(left, right)[0, 1] > 0.8


@pytest.mark.parametrize(("width", "height"), [(16, 16), (64, 48), (48, 64), (100, 16)])
def test_small_frames(width: int, height: int) -> None:
    # The settings allow frames down to 16x16 (`recorder record --width 64 --height 48`).
    camera = SyntheticCamera("a", width=width, height=height, fps=30, seed=3)
    frames = [camera.read() for _ in range(40)]
    assert all(f.shape == (height, width, 3) and f.dtype == np.uint8 for f in frames)
    assert np.mean(np.abs(frames[0].astype(float) - frames[-1].astype(float))) > 0

