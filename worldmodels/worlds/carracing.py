"""CarRacing drawn for V: gymnasium's own `CarRacing-v3`, its frames drawn at the size V reads.

Gymnasium draws every step on a 1000x800 surface, one Python call per polygon (about 800 a step, most of them
off screen), then shrinks it to 96x96: 99% of a step's cost. `FastFrames` replaces only that drawing. The
physics, the track of a seed, the reward and the termination are gymnasium's, untouched: the world still steps
itself, and its `state_pixels` render comes from `FastCarRacing.draw`. That draws the same camera (position,
rotation, zoom and the first second's zoom-in), field, grass, road, borders, car and wheels straight at the output
size (anti-aliased by drawing at `SUPERSAMPLE` times the size and averaging): all of a step's transforms and culling
are a few array operations over every polygon, and pygame fills the ~40 visible ones. The dashboard (speed bar, ABS
sensors, steering, gyro, score) is computed, not drawn: each of its rectangles weighted by how gymnasium's own chain
of averages spreads it over the frame's pixels (`window_weights`), so its edges land where gymnasium's do.
"""

from __future__ import annotations

import functools
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
from worldmodels.worlds.pictures import view

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
STRIP_TOP = car_racing.WINDOW_H * 35 // 40  # gymnasium's dashboard strip: the window's bottom eighth
_S, _H = car_racing.WINDOW_W / 40.0, car_racing.WINDOW_H / 40.0  # gymnasium's dashboard units
BAR_BASE = car_racing.WINDOW_H - _H  # the row the speed bar and the ABS sensors grow from
BAR_HEIGHTS = [_H * 0.02, _H * 0.01, _H * 0.01, _H * 0.01, _H * 0.01]  # window rows per unit of speed and of wheel spin
_BAR_PLACES = [5, 7, 8, 9, 10]  # gymnasium's columns of the speed bar and the ABS sensors, in dashboard units
METER_CENTRES = [_S * 20.0, _S * 30.0]  # the column the steering and the gyro grow from
METER_WIDTHS = [_S * -10.0, _S * -0.8]  # window columns per radian and per radian a second
BAR_COLOURS = np.array(  # the speed bar, then the four ABS sensors
    [(255, 255, 255), (0, 0, 255), (0, 0, 255), (51, 0, 255), (51, 0, 255)], dtype=np.float32
)
_BAR_COLOUR_TUPLES = [tuple(int(c) for c in colour) for colour in BAR_COLOURS]


@functools.lru_cache(maxsize=16)
def window_weights(window: int, size: int, low: float, high: float) -> np.ndarray:
    """Along one axis, the share of each of gymnasium's window pixels in each frame pixel, summed from the window's
    edge: (size, window + 1), column k the weight of pixels 0..k-1. Gymnasium averages its window down to its
    96-pixel state picture (pygame's smoothscale: each pixel the mean of the area it covers), then the observation
    takes the view box [low, high] of it at `size` pixels (`pictures.view`)."""
    state = car_racing.STATE_W if window == car_racing.WINDOW_W else car_racing.STATE_H
    edges = np.arange(state + 1) * window / state
    pixel = np.arange(window)
    cover = np.minimum(pixel + 1, edges[1:, None]) - np.maximum(pixel, edges[:-1, None])
    average = np.clip(cover, 0.0, None) * state / window  # (state, window)
    # the view's resize is linear: its weights are its pictures of single bright pixels, along this axis
    across = window == car_racing.WINDOW_W
    crop, pixels = ([0.0, 1.0, low, high], (1, state)) if across else ([low, high, 0.0, 1.0], (state, 1))
    bright = [np.eye(state, dtype=np.float32)[j].reshape(pixels) for j in range(state)]
    resize = np.stack([view(b, size, crop)[0] if across else view(b, size, crop)[:, 0] for b in bright], axis=1)
    weights = resize.astype(np.float64) @ average  # (size, window)
    return np.concatenate([np.zeros((size, 1)), np.cumsum(weights, axis=1)], axis=1)


class FastCarRacing:
    """Draws a CarRacing world's `state_pixels` frame: (height, width, 3) uint8 of the view box `crop`."""

    def __init__(self, world: CarRacing, width: int, height: int, crop: list[float]):
        self.world, self.size = world, (width, height)
        top, bottom, left, right = crop
        # gymnasium's window pixels (1000x800, y down, after its flip) to drawn pixels: x * scale + offset
        scale = np.array([width / (right - left), height / (bottom - top)]) * SUPERSAMPLE / WINDOW
        offset = -np.array([left * width / (right - left), top * height / (bottom - top)]) * SUPERSAMPLE
        self.surface = pygame.Surface((width * SUPERSAMPLE, height * SUPERSAMPLE))
        self._box = (*scale.tolist(), *offset.tolist())  # the same map as Python floats, read every frame
        self._track: list | None = None  # the road_poly list the ground caches were built from
        self._ground = np.zeros((0, 4, 2))  # grass patches then road polygons, world coordinates
        self._centres, self._radii = np.zeros((0, 2)), np.zeros(0)
        self._half_view = np.array(self.surface.get_size()) / 2
        self._reach_scale, self._reach_cache = -1.0, np.zeros((0, 2))
        self._colours: list = []
        self._texts: dict[str, tuple[slice, np.ndarray]] = {}
        self._font: pygame.font.Font | None = None
        self._car: object = None  # the car the shapes below were read from
        self._shapes: list[tuple[Any, list[list], tuple[int, int, int]]] = []
        # the dashboard strip is not drawn but added to the frame as gymnasium's own chain of averages spreads its
        # window pixels over the frame's rows and columns (`window_weights`): its bars' edges fall between pixels
        across = window_weights(car_racing.WINDOW_W, width, left, right).astype(np.float32)
        down = window_weights(car_racing.WINDOW_H, height, top, bottom).astype(np.float32)
        reached = np.flatnonzero(down[:, -1] - down[:, STRIP_TOP] > 0)
        self._dashboard_seen = len(reached) > 0  # a view box well above the strip never shows it
        self._strip_rows = slice(int(reached[0]), int(reached[-1]) + 1) if len(reached) else slice(0, 0)
        # only the rows above the strip (and its first, the scene's last) are drawn and averaged down
        self._drawn_rows = self._strip_rows.start + 1 if self._dashboard_seen else height
        self._drawn = self.surface.subsurface((0, 0, width * SUPERSAMPLE, self._drawn_rows * SUPERSAMPLE))
        self.surface.set_clip(self._drawn.get_rect())
        # summed weights by window row or column, one lookup per edge: (window rows + 1, strip rows) and
        # (window columns + 1, columns)
        self._rows_down = np.ascontiguousarray(down[self._strip_rows].T)
        self._columns_across = np.ascontiguousarray(across.T)
        # the strip's parts, each a weight on every strip row (`_weights`) times one row's picture (`_parts`): the
        # five bars (their columns fixed, their rows read each step), the two meters (their rows fixed, their columns
        # read each step, in full colour), the scene's last row above the strip, and a constant half for rounding
        places = np.array(_BAR_PLACES)
        first, last = np.floor(places * _S).astype(int), np.floor((places + 1) * _S).astype(int) + 1
        bar_columns = self._columns_across[last] - self._columns_across[first]  # (5, columns)
        self._parts = np.zeros((9, width * 3), dtype=np.float32)
        self._parts[:5] = (bar_columns[:, :, None] * BAR_COLOURS[:, None, :]).reshape(5, -1)
        self._parts[8] = 0.5
        top, low = int(car_racing.WINDOW_H - 4 * _H), int(car_racing.WINDOW_H - 2 * _H) + 1
        rows_down = self._rows_down
        self._weights = np.zeros((9, rows_down.shape[1]), dtype=np.float32)
        self._weights[5:7] = (rows_down[low] - rows_down[top]) * 255
        self._weights[7] = 1 - rows_down[-1] + rows_down[STRIP_TOP]  # the last resize blurs in the scene
        self._weights[8] = 1.0

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
        if not self._dashboard_seen:
            return self._shrink()
        starts, ends = self._indicators()
        return self._add_dashboard(self._shrink(), starts, ends)

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

    def _indicators(self) -> tuple[list[int], list[int]]:
        """The window pixels gymnasium's dashboard indicators fill, [start, end): the rows of the speed bar and the
        four ABS sensors (their columns never move), then the columns of the steering and the gyro (their rows never
        move); empty for one gymnasium does not draw. A bar's part above the strip (a very fast car) is drawn on the
        surface. Plain Python: numpy costs more than it saves on seven numbers."""
        car = self.world.car
        assert car is not None
        vx, vy = car.hull.linearVelocity
        wheels = car.wheels
        bars = [math.sqrt(vx * vx + vy * vy), *(wheel.omega for wheel in wheels)]
        meters = [wheels[0].joint.angle, car.hull.angularVelocity]
        spans = []
        # pygame fills a polygon's pixels from the floor of its least to the floor of its greatest coordinate
        for k, value in enumerate(bars):
            if abs(value) <= 1e-4:  # gymnasium's threshold
                spans.append((0, 0))
                continue
            end = BAR_BASE - value * BAR_HEIGHTS[k]
            top = max(math.floor(min(end, BAR_BASE)), 0)
            low = min(math.floor(max(end, BAR_BASE)) + 1, car_racing.WINDOW_H)
            if top < STRIP_TOP:  # above the strip a bar covers the road: drawn there
                place = _BAR_PLACES[k]
                self._screen_box(_BAR_COLOUR_TUPLES[k], place * _S, (place + 1) * _S, top, STRIP_TOP)
                top = STRIP_TOP
            spans.append((top, low))
        for k, value in enumerate(meters):
            if abs(value) <= 1e-4:
                spans.append((0, 0))
                continue
            centre = METER_CENTRES[k]
            end = centre + value * METER_WIDTHS[k]
            left, right = math.floor(min(end, centre)), math.floor(max(end, centre)) + 1
            spans.append((max(left, 0), min(right, car_racing.WINDOW_W)))
        return [start for start, _ in spans], [end for _, end in spans]

    def _screen_box(self, colour, x0: float, x1: float, y0: float, y1: float) -> None:
        """Fill the rectangle between x0, x1 and y0, y1 of gymnasium's window (after its flip), in either order."""
        sx, sy, ox, oy = self._box
        left, right = sorted((round(x0 * sx + ox), round(x1 * sx + ox)))
        top, low = sorted((round(y0 * sy + oy), round(y1 * sy + oy)))
        self.surface.fill(colour, (left, top, max(right - left, 1), max(low - top, 1)))

    def _add_dashboard(self, frame: np.ndarray, starts: list[int], ends: list[int]) -> np.ndarray:
        """Gymnasium's dashboard strip on the frame's bottom rows, each of its window pixels weighted by its share of
        every frame pixel: black, the five bars, the two meters, the scene blurred into its top rows, and the score.

        Each part is a weight on every strip row times a picture of one strip row (`_parts`), so one product adds them
        all: a bar's rows change with its reading, a meter's columns with its."""
        rows, weights, parts = self._strip_rows, self._weights, self._parts
        reach = self._rows_down[ends[:5] + starts[:5]]  # (10, strip rows)
        np.subtract(reach[:5], reach[5:], out=weights[:5])
        span = self._columns_across[ends[5:] + starts[5:]]  # (4, columns)
        meters = parts[5:7].reshape(2, -1, 3)
        np.subtract(span[0], span[2], out=meters[0, :, 1])  # the steering, green
        np.subtract(span[1], span[3], out=meters[1, :, 0])  # the gyro, red
        parts[7] = frame[rows.start].reshape(-1)  # the scene's last row above the strip
        strip = weights.T @ parts  # (strip rows, columns x 3), plus 0.5 to round (`_parts`)
        columns, digits = self._score_picture()
        strip[:, columns] += digits
        frame[rows] = strip.reshape(-1, frame.shape[1], 3)  # truncated to uint8: rounded
        return frame

    def _score_picture(self) -> tuple[slice, np.ndarray]:
        """The score, white on black where gymnasium centres it, spread over the strip like the rest: the part of a
        strip row (columns x 3) it reaches and its values there (cached by text: a score takes few values)."""
        text = f"{self.world.reward:04.0f}"
        cached = self._texts.get(text)
        if cached is None:
            if self._font is None:
                pygame.font.init()
                self._font = pygame.font.Font(pygame.font.get_default_font(), 42)
            rendered = self._font.render(text, True, (255, 255, 255), (0, 0, 0))
            rect = rendered.get_rect(center=(60, car_racing.WINDOW_H * (1 - 2.5 / 40.0)))
            left, top = max(rect.left, 0), max(rect.top, 0)
            right, low = min(rect.right, car_racing.WINDOW_W), min(rect.bottom, car_racing.WINDOW_H)
            pixels = pygame.surfarray.array3d(rendered)  # (x, y, 3)
            pixels = pixels[left - rect.left : right - rect.left, top - rect.top : low - rect.top]
            tall = np.diff(self._rows_down[top : low + 1], axis=0).T  # (strip rows, text rows)
            wide = np.diff(self._columns_across[left : right + 1], axis=0).T  # (frame columns, text columns)
            reached = np.flatnonzero(wide.sum(1) > 0)
            first, last = int(reached[0]), int(reached[-1]) + 1
            w, h = pixels.shape[:2]
            across = (wide[first:last] @ pixels.reshape(w, h * 3).astype(np.float32)).reshape(-1, h, 3)
            digits = np.einsum("yi,xic->yxc", tall, across)  # (strip rows, columns, 3)
            cached = (slice(3 * first, 3 * last), digits.reshape(len(tall), -1))  # columns x 3, as the strip's
            if len(self._texts) > 4096:  # bound the cache all the same
                self._texts.clear()
            self._texts[text] = cached
        return cached

    def _shrink(self) -> np.ndarray:
        """The drawn surface averaged down to the output size, (height, width, 3) uint8: the rows down to the strip's
        first (those below are the dashboard's, `_add_dashboard`)."""
        width, height = self.size
        drawn = self._drawn_rows
        small = pygame.transform.smoothscale(self._drawn, (width, drawn))  # an integer factor: a box average
        frame = np.empty((height, width, 3), dtype=np.uint8)
        top = frame[:drawn]
        top[:] = np.frombuffer(pygame.image.tobytes(small, "RGB"), dtype=np.uint8).reshape(drawn, width, 3)
        np.maximum(top, ROUNDING, out=top)
        top -= ROUNDING
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
