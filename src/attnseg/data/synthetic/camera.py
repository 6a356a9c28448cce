"""The pinhole camera of the synthetic street: world points to pixels, ground points, pixels per metre at a depth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAMERA_HEIGHT = 1.5  # metres
Z_NEAR = 1.0  # metres; planes are cut here so that projected coordinates stay bounded
Z_FAR = 400.0


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking along +Z, horizontal; X to the right, Y up from the ground plane."""

    focal: float
    cx: float
    horizon: float
    width: int
    height: int
    elevation: float = CAMERA_HEIGHT

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points (X, Y, Z) -> (N, 2) image points."""
        points = np.asarray(points, dtype=np.float64)
        z = points[:, 2]
        x = self.cx + self.focal * points[:, 0] / z
        y = self.horizon + self.focal * (self.elevation - points[:, 1]) / z
        return np.stack([x, y], axis=1)

    def ground_xy(self, x_world: float, z: float) -> tuple[float, float]:
        """Image point of the ground point (x_world, 0, z)."""
        return self.cx + self.focal * x_world / z, self.horizon + self.focal * self.elevation / z

    def scale(self, z: float) -> float:
        """Pixels per metre at depth z."""
        return self.focal / z


def random_camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    """A camera with a random horizon, focal length and principal point (drawn in that order)."""
    horizon = height * rng.uniform(0.36, 0.47)
    return Camera(
        focal=width * rng.uniform(0.95, 1.35), cx=width * rng.uniform(0.42, 0.58), horizon=horizon,
        width=width, height=height,
    )  # fmt: skip
