"""CarRacing drawn for V: gymnasium's own `CarRacing-v3`, its frames drawn at the size V reads.

Gymnasium draws every step on a 1000x800 surface, one Python call per polygon (about 800 a step, most of them
off screen), then shrinks it to 96x96: 99% of a step's cost. `FastFrames` replaces only that drawing. The
physics, the track of a seed, the reward and the termination are gymnasium's, untouched: the world still steps
itself, and its `state_pixels` render comes from `FastCarRacing.draw`. That draws the same camera (position,
rotation, zoom and the first second's zoom-in), field, grass, road, borders, car, wheels, dashboard and score,
straight at the output size (anti-aliased by drawing at `SUPERSAMPLE` times the size and averaging): all of a
step's transforms and culling are a few array operations over every polygon, and pygame fills the ~40 visible ones.
"""

from __future__ import annotations

import math
import os
from typing import Any

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame's font module starts SDL: no screen needed

import gymnasium as gym
import numpy as np
import pygame
from gymnasium.envs.box2d import car_dynamics, car_racing
from gymnasium.envs.box2d.car_racing import CarRacing

from worldmodels.core.errors import WorldModelsError

# Drawn at 2x the size, then averaged down by pygame's smoothscale. Gymnasium shrinks its window by smoothscale at a
# factor of 10.4, whose rounding leaves every pixel about 2 levels darker; at 2x it is exact, so the frame is darkened
# by 2 to match. Measured against gymnasium's frames at 64x64 (benchmarks/real_world.py): a mean absolute error of
# 0.93 at 2x, 0.36 at 3x (its rounding darkens as gymnasium's does) for a fifth more time a frame, 3.4 at 1x.
SUPERSAMPLE = 2
ROUNDING = 2  # the levels gymnasium's smoothscale loses to rounding
WINDOW = np.array([car_racing.WINDOW_W, car_racing.WINDOW_H], dtype=np.float64)
_GRASS = car_racing.GRASS_DIM * np.array(
    [
        [(x + 1, y), (x, y), (x, y + 1), (x + 1, y + 1)]
        for x in range(-20, 20, 2)
        for y in range(-20, 20, 2)  # gymnasium's checker of grass patches, in its order
    ],
    dtype=np.float64,
)
_FIELD = car_racing.PLAYFIELD * np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=np.float64)
_HULL_COLOR = (204, 0, 0)  # car_dynamics' hull colour (0.8, 0, 0) as gymnasium converts it


class FastCarRacing:
    """Draws a CarRacing world's `state_pixels` frame: (height, width, 3) uint8 of the view box `crop`."""

    def __init__(self, world: CarRacing, width: int, height: int, crop: list[float]):
        self.world, self.size = world, (width, height)
        top, bottom, left, right = crop
        # gymnasium's window pixels (1000x800, y down, after its flip) to drawn pixels: x * scale + offset
        self.scale = np.array([width / (right - left), height / (bottom - top)]) * SUPERSAMPLE / WINDOW
        self.offset = -np.array([left * width / (right - left), top * height / (bottom - top)]) * SUPERSAMPLE
        self.surface = pygame.Surface((width * SUPERSAMPLE, height * SUPERSAMPLE))
        self._box = (*self.scale.tolist(), *self.offset.tolist())  # the same map as Python floats, read every frame
        self._track: list | None = None  # the road_poly list the ground caches were built from
        self._ground = np.zeros((0, 4, 2))  # grass patches then road polygons, world coordinates
        self._centres, self._radii = np.zeros((0, 2)), np.zeros(0)
        self._half_view = np.array(self.surface.get_size()) / 2
        self._reach_scale, self._reach_cache = -1.0, np.zeros((0, 2))
        self._colours: list = []
        self._texts: dict[str, pygame.Surface] = {}
        self._font: pygame.font.Font | None = None
        self._car: object = None  # the car the shapes below were read from
        self._shapes: list[tuple[Any, list[list], tuple[int, int, int]]] = []
        # gymnasium's dashboard strip is the window's bottom eighth: a view box above it never shows it
        self._dashboard_seen = bottom > 1 - 5 / 40

    def draw(self) -> np.ndarray:
        """The frame of the world's current state, as gymnasium's `_render("state_pixels")` would give it."""
        world, car = self.world, self.world.car
        assert car is not None
        self._cache_track()
        zoom = 0.1 * car_racing.SCALE * max(1 - world.t, 0) + car_racing.ZOOM * car_racing.SCALE * min(world.t, 1)
        cos, sin = math.cos(-car.hull.angle) * zoom, math.sin(-car.hull.angle) * zoom
        sx, sy, ox, oy = self._box
        # world to drawn pixels, (X, Y) = (a x + b y + e, c x + d y + f): gymnasium rotates about the car,
        # scales, moves the car to (W/2, H/4) of its window and flips the window upside down
        a, b, c, d = cos * sx, -sin * sx, -sin * sy, -cos * sy
        x, y = car.hull.position
        e = car_racing.WINDOW_W / 2 * sx + ox - a * x - b * y
        f = car_racing.WINDOW_H * 3 / 4 * sy + oy - c * x - d * y
        affine = (a, b, c, d, e, f)
        self._draw_field(affine)
        self._draw_ground(affine, zoom * max(sx, sy))
        self._draw_car(affine)
        if self._dashboard_seen:
            self._draw_dashboard()
        return self._shrink()

    def _cache_track(self) -> None:
        """Grass and road polygons as one array with their bounding circles, rebuilt when the world made a new
        track (at reset)."""
        if self._track is self.world.road_poly and len(self._ground) == len(_GRASS) + len(self._track):
            return
        self._track = self.world.road_poly
        road = np.array([poly for poly, _ in self._track], dtype=np.float64).reshape(-1, 4, 2)
        self._ground = np.concatenate([_GRASS, road])
        self._centres = self._ground.mean(axis=1)
        self._radii = np.linalg.norm(self._ground - self._centres[:, None], axis=2).max(axis=1)
        self._reach_scale = -1.0  # the ground changed: the reach below is stale
        # the live colour objects: touching a road tile changes its colour array in place
        self._colours = [self.world.grass_color] * len(_GRASS) + [colour for _, colour in self._track]

    def _draw_field(self, affine: tuple[float, ...]) -> None:
        """The field's colour where the view is inside the playfield, black beyond it (as gymnasium's surface)."""
        a, b, c, d, e, f = affine
        det, (w, h) = a * d - b * c, self.surface.get_size()
        # the view's corners in world coordinates, through the inverse map
        corners = [
            ((d * (u - e) - b * (v - f)) / det, (a * (v - f) - c * (u - e)) / det) for u in (0, w) for v in (0, h)
        ]
        colour = _colour(self.world.bg_color)
        if max(max(abs(x), abs(y)) for x, y in corners) < car_racing.PLAYFIELD:
            self.surface.fill(colour)  # the usual case: one fill instead of a polygon over the whole view
            return
        self.surface.fill((0, 0, 0))
        pygame.draw.polygon(self.surface, colour, _transform(affine, _FIELD.tolist()))

    def _draw_ground(self, affine: tuple[float, ...], scale: float) -> None:
        """Fill the visible grass patches and road polygons, in gymnasium's order."""
        a, b, c, d, e, f = affine
        linear, shift = np.array([[a, c], [b, d]]), np.array([e, f])
        # a polygon is drawn when its bounding circle meets the view: a few array operations over all of them
        centres = self._centres @ linear + shift
        seen = np.abs(centres - self._half_view) <= self._reach(scale)
        visible = np.flatnonzero(seen[:, 0] & seen[:, 1])
        pixels = (self._ground[visible].reshape(-1, 2) @ linear + shift).reshape(-1, 4, 2).tolist()
        colours, surface = self._colours, self.surface
        for i, polygon in zip(visible.tolist(), pixels):
            pygame.draw.polygon(surface, colours[i], polygon)  # pygame truncates a float colour as gymnasium does

    def _reach(self, scale: float) -> np.ndarray:
        """How far from the view's centre, in pixels along each axis, a polygon's centre may lie and still be seen
        (kept while the zoom stays, i.e. after the first second)."""
        if scale != self._reach_scale:
            self._reach_scale = scale
            self._reach_cache = self._half_view + self._radii[:, None] * scale
        return self._reach_cache

    def _draw_car(self, affine: tuple[float, ...]) -> None:
        """The wheels (each with its turning white stripe), then the hull's four parts, as car_dynamics draws them."""
        a, b, c, d, e, f = affine
        for body, shapes, colour in self._car_shapes():
            cos, sin = math.cos(body.angle), math.sin(body.angle)
            x, y = body.position
            # the body's frame composed with the view's: one affine map per body
            turn = (a * cos + b * sin, b * cos - a * sin, c * cos + d * sin, d * cos - c * sin)
            placed = (*turn, a * x + b * y + e, c * x + d * y + f)
            for shape in shapes:
                pygame.draw.polygon(self.surface, colour, _transform(placed, shape))
            stripe = _wheel_stripe(body.phase) if colour == car_dynamics.WHEEL_COLOR else None
            if stripe is not None:
                pygame.draw.polygon(self.surface, car_dynamics.WHEEL_WHITE, _transform(placed, stripe))

    def _car_shapes(self) -> list[tuple[Any, list[list], tuple[int, int, int]]]:
        """Each body of the car with its fixtures' local vertices and its colour, read once per car (Box2D's
        accessors are slow)."""
        car = self.world.car
        assert car is not None
        if self._car is not car:
            self._car = car
            self._shapes = [
                (
                    body,
                    [[tuple(vertex) for vertex in fixture.shape.vertices] for fixture in body.fixtures],
                    _HULL_COLOR if body is car.hull else car_dynamics.WHEEL_COLOR,
                )
                for body in car.drawlist
            ]
        return self._shapes

    def _draw_dashboard(self) -> None:
        """The black strip with the speed bar, the four ABS sensors, the steering and the gyro, and the score."""
        car = self.world.car
        assert car is not None
        s, h, bottom = car_racing.WINDOW_W / 40.0, car_racing.WINDOW_H / 40.0, car_racing.WINDOW_H
        # every indicator is an axis-aligned rectangle of gymnasium's window: a fill, not a polygon
        self._screen_box((0, 0, 0), 0.0, car_racing.WINDOW_W, bottom - 5 * h, bottom)
        vx, vy = car.hull.linearVelocity
        wheels = car.wheels
        columns = [  # (value, place, height per unit, colour) of gymnasium's vertical indicators
            (math.sqrt(vx * vx + vy * vy), 5, 0.02, (255, 255, 255)),  # the speed bar
            *((wheels[i].omega, 7 + i, 0.01, (0, 0, 255) if i < 2 else (51, 0, 255)) for i in range(4)),  # ABS
        ]
        for value, place, per_unit, colour in columns:
            if abs(value) > 1e-4:  # gymnasium draws an indicator only above this
                self._screen_box(colour, place * s, (place + 1) * s, bottom - h - h * per_unit * value, bottom - h)
        rows = [(wheels[0].joint.angle, 20, -10.0, (0, 255, 0)), (car.hull.angularVelocity, 30, -0.8, (255, 0, 0))]
        for value, place, per_unit, colour in rows:  # the steering and the gyro
            if abs(value) > 1e-4:
                self._screen_box(colour, place * s, (place + per_unit * value) * s, bottom - 4 * h, bottom - 2 * h)
        self._draw_score()

    def _screen_box(self, colour, x0: float, x1: float, y0: float, y1: float) -> None:
        """Fill the rectangle between x0, x1 and y0, y1 of gymnasium's window (after its flip), in either order."""
        sx, sy, ox, oy = self._box
        left, right = sorted((round(x0 * sx + ox), round(x1 * sx + ox)))
        top, low = sorted((round(y0 * sy + oy), round(y1 * sy + oy)))
        self.surface.fill(colour, (left, top, max(right - left, 1), max(low - top, 1)))

    def _draw_score(self) -> None:
        """The score, white on black, centred where gymnasium puts it; skipped when the view box leaves it out."""
        text = f"{self.world.reward:04.0f}"
        picture = self._texts.get(text)
        if picture is None:
            if self._font is None:
                pygame.font.init()
                self._font = pygame.font.Font(pygame.font.get_default_font(), 42)
            full = self._font.render(text, True, (255, 255, 255), (0, 0, 0)).convert(24)
            width, height = np.maximum(np.array(full.get_size()) * self.scale, 1).round().astype(int)
            picture = pygame.transform.smoothscale(full, (int(width), int(height)))
            if len(self._texts) > 4096:  # a score takes few values in an episode; bound the cache all the same
                self._texts.clear()
            self._texts[text] = picture
        sx, sy, ox, oy = self._box
        centre = (round(60.0 * sx + ox), round(car_racing.WINDOW_H * (1 - 2.5 / 40.0) * sy + oy))
        self.surface.blit(picture, picture.get_rect(center=centre))  # clipped to the surface by pygame

    def _shrink(self) -> np.ndarray:
        """The drawn surface averaged down to the output size: (height, width, 3) uint8."""
        small = pygame.transform.smoothscale(self.surface, self.size)  # an integer factor: a box average
        width, height = self.size
        frame = np.frombuffer(bytearray(pygame.image.tobytes(small, "RGB")), dtype=np.uint8).reshape(height, width, 3)
        np.maximum(frame, ROUNDING, out=frame)
        frame -= ROUNDING
        return frame


def _colour(rgb) -> tuple[int, int, int]:
    """A colour as gymnasium passes it to pygame (its components truncated to integers)."""
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _transform(affine: tuple[float, ...], points) -> list[tuple[float, float]]:
    """Points (x, y) through an affine map (a, b, c, d, e, f): (a x + b y + e, c x + d y + f)."""
    a, b, c, d, e, f = affine
    return [(a * x + b * y + e, c * x + d * y + f) for x, y in points]


def _wheel_stripe(phase: float) -> list[tuple[float, float]] | None:
    """The white band on a turning wheel, in the wheel's frame, as car_dynamics draws it (None: not seen)."""
    s1, s2, c1, c2 = math.sin(phase), math.sin(phase + 1.2), math.cos(phase), math.cos(phase + 1.2)
    if s1 > 0 and s2 > 0:
        return None
    if s1 > 0:
        c1 = float(np.sign(c1))
    if s2 > 0:
        c2 = float(np.sign(c2))
    w, r = car_dynamics.WHEEL_W * car_dynamics.SIZE, car_dynamics.WHEEL_R * car_dynamics.SIZE
    return [(-w, r * c1), (w, r * c1), (w, r * c2), (-w, r * c2)]


class FastFrames(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """env.renderer = "fast": a CarRacing world whose observations are drawn by `FastCarRacing` at frame_size.

    Only the world's `state_pixels` drawing is replaced (an instance attribute shadows its `_render`), so its
    physics, tracks, rewards and terminations stay gymnasium's. Observations are the recipe's view box (`crop`)
    at frame_size x frame_size, ready for V."""

    def __init__(self, env: gym.Env, frame_size: int, crop: list[float]):
        gym.utils.RecordConstructorArgs.__init__(self, frame_size=frame_size, crop=list(crop))
        super().__init__(env)
        world = env.unwrapped
        if not isinstance(world, CarRacing):
            name = env.spec.id if env.spec is not None else type(world).__name__
            raise WorldModelsError(f'env.renderer = "fast" draws CarRacing only; {name} is not CarRacing')
        self.renderer = FastCarRacing(world, frame_size, frame_size, crop)
        world._render = self._render  # type: ignore[method-assign]  # read by its step() for every observation
        # the world says what it now returns, so gymnasium's checker sees observations within its space
        world.observation_space = gym.spaces.Box(0, 255, (frame_size, frame_size, 3), np.uint8)
        self.observation_space = world.observation_space

    def _render(self, mode: str):
        world = self.env.unwrapped
        if mode == "state_pixels":
            return self.renderer.draw() if "t" in world.__dict__ else None  # gymnasium's: nothing before reset
        return CarRacing._render(world, mode)  # type: ignore[arg-type]  # its own pictures for rgb_array and human
