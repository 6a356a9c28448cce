"""The synthetic package's pieces: camera geometry, the sprite surface, the drawing context and the scene's layers."""

import numpy as np

from attnseg.data.synthetic.camera import Camera
from attnseg.data.synthetic.drawing import SceneDrawing
from attnseg.data.synthetic.raster import polygon_area
from attnseg.data.synthetic.scene import draw_scene
from attnseg.data.synthetic.sprite import Sprite


def test_camera_ground_point_and_scale_agree_with_projection():
    camera = Camera(focal=100.0, cx=64.0, horizon=30.0, width=128, height=64)
    projected = camera.project(np.array([[2.0, 0.0, 10.0], [2.0, 1.0, 10.0]]))
    assert np.allclose(projected[0], camera.ground_xy(2.0, 10.0))
    assert np.isclose(projected[0, 1] - projected[1, 1], camera.scale(10.0))  # 1 m up is `scale` pixels
    assert projected[0, 1] > camera.horizon  # ground points lie below the horizon


def test_sprite_mirror_flips_the_drawing_about_its_ground_point():
    camera = Camera(focal=100.0, cx=64.0, horizon=30.0, width=128, height=64)
    sprite = Sprite(camera, 0.0, 5.0, 1.0, 1.0, (10, 20, 30))
    sprite.rect(0.2, 0.0, 0.8, 0.5, (200, 0, 0))  # right of the ground point only
    ground = sprite.ground_x
    columns = np.nonzero(sprite.mask.any(axis=0))[0]
    sprite.mirror()
    mirrored = np.nonzero(sprite.mask.any(axis=0))[0]
    assert columns.min() > ground and mirrored.max() < sprite.ground_x
    assert np.allclose(sorted(ground - columns), sorted(mirrored - sprite.ground_x))
    assert (sprite.rgb[sprite.mask > 0] == (200, 0, 0)).all()  # the colour layer moved with the mask
    assert (sprite.rgb[sprite.mask == 0] == (10, 20, 30)).all()


def test_depth_keeps_an_object_in_view():
    drawing = SceneDrawing(np.random.default_rng(0), 128, 64)
    cam = drawing.camera
    for x_world in (-6.0, 0.5, 6.0):  # near = 1 m would put +-6 m far outside a 128-pixel-wide view
        for _ in range(20):
            z = drawing.depth(1.0, 30.0, x_world)
            x_pixel, _ = cam.ground_xy(x_world, z)
            assert 0.1 * cam.cx - 1e-6 <= x_pixel <= cam.cx + 0.9 * (cam.width - cam.cx) + 1e-6


def test_scene_layers_come_in_painters_order():
    drawing = draw_scene(np.random.default_rng(3), 256, 128, forced=("car", "person"))
    shapes = drawing.shapes()
    labels = [s.label for s in shapes]
    assert labels[0] == "sky"
    assert labels.count("car") >= 2 and "person" in labels
    first_upright = len(drawing.background) + len(drawing.sides)
    upright = {id(s) for _, group in drawing.upright for s in group}
    assert upright and {id(s) for s in shapes[first_upright : first_upright + len(upright)]} == upright
    depth_of = {id(s): z for z, group in drawing.upright for s in group}
    depths = [depth_of[id(s)] for s in shapes[first_upright : first_upright + len(upright)]]
    assert depths == sorted(depths, reverse=True) and len(set(depths)) > 3  # far to near
    for shape in shapes:
        assert shape.polygon.min() >= 0 and shape.polygon[:, 0].max() < 256 and shape.polygon[:, 1].max() < 128
        assert polygon_area(shape.polygon) >= 0.5
