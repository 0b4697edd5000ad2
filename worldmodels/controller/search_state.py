"""The CMA-ES search state as plain data: pycma's object saved without pickle and rebuilt exactly.

pycma only knows how to pickle its `CMAEvolutionStrategy`, and unpickling a file runs whatever code the file
names, so a run folder someone hands you could run code on your machine. Instead the object graph is written
as numbers, strings, tensors and containers (a file `torch.load(weights_only=True)` reads) and rebuilt over a
fresh search made from the recipe: attributes are restored into objects of pycma's own classes, while what is
code, not data (functions, pycma's options, which it evaluates as Python expressions), is always taken from
the fresh search, never from the file. The resumed search continues bit for bit as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from worldmodels import config
from worldmodels.core.errors import WorldModelsError
from worldmodels.runs import checkpoints

with warnings.catch_warnings():  # pycma warns at import when matplotlib (only for its plots) is absent
    warnings.simplefilter("ignore", UserWarning)
    import cma
    from cma.options_parameters import CMAOptions

FORMAT = 1
# settings added since the format began: what a state saved before them searched under
SEARCH_DEFAULTS = {"normalize": False, "random_actions": 0.0}
NUMERIC_KINDS = "biuf"  # numpy dtypes a state may hold: bool, int, uint, float


@dataclasses.dataclass
class Progress:
    """What survives an interruption besides the CMA-ES object."""

    generation: int = 0
    best_score: float = -np.inf
    best: np.ndarray | None = None
    env_steps: int = 0  # steps spent in the world C trains in (real or dream)
    real_steps: int = 0  # real steps spent watching a dream-trained C (controller.real_rollouts), never for selection
    round: int = 0  # iterative training round (dream)
    round_start: int = 0  # the generation the round began at
    world: str = "real"  # where the search scores candidates
    rules: dict | None = None  # what a world's scores mean (the codebook world: objective, episode length, table)
    history: list | None = None  # every re-evaluated contender: {generation, kind, params, score in the search's world
    #                                (over eval_rollouts, + confirm_rollouts where it was confirmed)}
    selected: int = -1  # the generation the final re-scoring of the top contenders (controller.select_top) ran at
    world_state: dict | None = None  # a stateful world's own state (evaluators.StatefulEvaluator.state())
    input_scale: dict | None = None  # controller.normalize: C's inputs' {mean, std}, measured when the search began

    @property
    def archive(self) -> dict:
        """The codebook world's architectures queried -> surrogate score (its `world_state`)."""
        return (self.world_state or {}).get("archive") or {}

    @property
    def queries(self) -> int:
        """The codebook world's surrogate queries, repeats included."""
        return (self.world_state or {}).get("queries", 0)

    @classmethod
    def from_saved(cls, saved: dict) -> Progress:
        """Progress from its saved fields; a state saved before `world_state` kept the codebook's archive on its own."""
        saved = dict(saved)
        archive, queries = saved.pop("archive", None), saved.pop("queries", 0)
        if archive:
            saved["world_state"] = {"archive": archive, "queries": queries}
        return cls(**saved)


def fresh_search(
    search: dict, x0: np.ndarray | None = None, sigma: float | None = None, restart: int = 0
) -> cma.CMAEvolutionStrategy:
    """The search a controller run starts from (`search`: dim, population, sigma0, seed), also the template a state
    is rebuilt over; with `x0` and `sigma`, its restart number `restart` around `x0` (rounds.sigma)."""
    return cma.CMAEvolutionStrategy(
        np.zeros(int(search["dim"])) if x0 is None else np.asarray(x0, dtype=float),
        float(search["sigma0"] if sigma is None else sigma),
        {"popsize": int(search["population"]), "seed": int(search["seed"]) + 1 + restart, "verbose": -9},
    )


def _cma_class(obj: Any) -> bool:
    """An instance of a class pycma defines."""
    return type(obj).__module__.split(".")[0] == "cma"


def _is_code(obj: Any) -> bool:
    """Functions, methods and classes (pycma's instances hold data even when callable), and pycma's options."""
    return (
        isinstance(obj, CMAOptions)
        or callable(obj)
        and not _cma_class(obj)
        and not isinstance(obj, (np.ndarray, np.generic))
    )


def _slots(cls: type) -> list[str]:
    return [s for k in cls.__mro__ for s in getattr(k, "__slots__", ()) if s not in ("__dict__", "__weakref__")]


# ---------------------------------------------------------------- writing


def encode(obj: Any, seen: dict[int, tuple] | None = None, path: tuple = ()) -> Any:
    """A plain-data tree for `obj`: containers, numbers, strings, tensors, and markers for shared and code parts.

    `seen` maps id -> (path, object): holding the object keeps its id from being reused while the walk runs.
    """
    seen = {} if seen is None else seen
    if obj is None or isinstance(obj, (bool, int, float, str)) and type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in NUMERIC_KINDS:
            raise TypeError(f"{path}: numpy scalar of dtype {obj.dtype}")
        return {"$np": obj.dtype.str, "v": obj.item()}
    if id(obj) in seen:  # shared object (pycma's logger points back at the search, arrays are shared): a reference
        return {"$ref": list(seen[id(obj)][0])}
    seen[id(obj)] = (path, obj)
    if _is_code(obj):  # functions, bound methods, classes, options: taken from the fresh search when rebuilt
        return {"$code": True}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in NUMERIC_KINDS:
            raise TypeError(f"{path}: array of dtype {obj.dtype}")
        stored = obj.astype(np.float64 if obj.dtype.kind == "f" else np.int64 if obj.dtype.kind in "iu" else bool)
        fortran = obj.ndim > 1 and obj.flags.f_contiguous and not obj.flags.c_contiguous
        return {"$array": torch.from_numpy(np.array(stored, order="C")), "dtype": obj.dtype.str, "fortran": fortran}
    if type(obj) is list:
        return [encode(v, seen, path + (i,)) for i, v in enumerate(obj)]
    if type(obj) is range:
        return {"$range": [obj.start, obj.stop, obj.step]}
    if type(obj) in (set, frozenset):
        return {
            "$set": [encode(v, seen, path + (i,)) for i, v in enumerate(sorted(obj))],
            "frozen": type(obj) is frozenset,
        }
    if type(obj) is tuple:
        return {"$tuple": [encode(v, seen, path + (i,)) for i, v in enumerate(obj)]}
    if type(obj) is dict:
        return {"$dict": _encode_items(obj, seen, path)}
    if _cma_class(obj):
        cls = type(obj)
        node: dict[str, Any] = {"$obj": f"{cls.__module__}:{cls.__qualname__}"}
        state = dict(getattr(obj, "__dict__", {}))
        state.update({s: getattr(obj, s) for s in _slots(cls) if hasattr(obj, s)})
        node["attrs"] = {k: encode(v, seen, path + ("attr", k)) for k, v in state.items()}
        if isinstance(obj, dict):
            node["items"] = _encode_items(obj, seen, path)
        if isinstance(obj, list):
            node["list"] = [encode(v, seen, path + (i,)) for i, v in enumerate(obj)]
        return node
    raise TypeError(f"{path}: cannot store a {type(obj).__qualname__}")


def _encode_items(obj: dict, seen: dict, path: tuple) -> list:
    """A dict's (key, value) pairs in order: keys need not be strings (pycma keys some dicts by tuples and ints)."""
    return [[encode(k, seen, path + ("key", i)), encode(v, seen, path + (i,))] for i, (k, v) in enumerate(obj.items())]


# ---------------------------------------------------------------- reading


class _Decoder:
    """Rebuilds a tree from `encode` over a template object graph, admitting only pycma's classes and plain data."""

    def __init__(self, template: Any, classes: dict[str, type]):
        self.template, self.classes = template, classes
        self.built: dict[tuple, Any] = {}

    def walk(self, path: tuple) -> Any:
        """The template's object at `path` (the steps `encode` wrote), or _MISSING."""
        obj = self.template
        i = 0
        while i < len(path):
            step = path[i]
            try:
                if step == "attr":
                    obj, i = getattr(obj, path[i + 1]), i + 2
                    continue
                if step == "key":
                    obj, i = list(obj.keys())[path[i + 1]], i + 2
                    continue
                obj = list(obj.values())[step] if isinstance(obj, dict) else obj[step]
            except (LookupError, TypeError, AttributeError):
                return _MISSING
            i += 1
        return obj

    def decode(self, node: Any, path: tuple = ()) -> Any:
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is list:
            return self._keep(path, [self.decode(v, path + (i,)) for i, v in enumerate(node)])
        if type(node) is not dict:
            raise ValueError(f"{path}: unexpected {type(node).__name__}")
        if "$np" in node:
            dtype = np.dtype(node["$np"])
            if dtype.kind not in NUMERIC_KINDS:
                raise ValueError(f"{path}: dtype {dtype}")
            return dtype.type(node["v"])
        if "$ref" in node:
            ref = tuple(node["$ref"])
            if ref not in self.built:
                raise ValueError(f"{path}: reference to {ref} before it exists")
            return self.built[ref]
        if "$code" in node:
            value = self.walk(path)
            if value is _MISSING or not _is_code(value):
                raise ValueError(f"{path}: code the fresh search does not have")
            return self._keep(path, value)
        if "$array" in node:
            dtype, tensor = np.dtype(node["dtype"]), node["$array"]
            if dtype.kind not in NUMERIC_KINDS or not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{path}: array of dtype {dtype}")
            array = tensor.numpy().astype(dtype)
            return self._keep(path, np.asfortranarray(array) if node.get("fortran") else array)
        if "$range" in node:
            return self._keep(path, range(*(int(v) for v in node["$range"])))
        if "$set" in node:
            items = [self._hashable(self.decode(v, path + (i,)), path) for i, v in enumerate(node["$set"])]
            return self._keep(path, frozenset(items) if node.get("frozen") else set(items))
        if "$tuple" in node:
            return self._keep(path, tuple(self.decode(v, path + (i,)) for i, v in enumerate(node["$tuple"])))
        if "$dict" in node:
            out = self._keep(path, {})
            for key, value in self._items(node["$dict"], path):
                out[key] = value
            return out
        if "$obj" in node:
            cls = self.classes.get(node["$obj"])
            if cls is None:
                raise ValueError(f"{path}: class {node['$obj']!r} is not one a search holds")
            # mypy reads cls.__new__ on a `type` as the metaclass's type.__new__: it is the class's own
            obj = self._keep(path, cast(Any, cls).__new__(cls))
            for name, v in node["attrs"].items():
                object.__setattr__(obj, name, self.decode(v, path + ("attr", name)))
            for key, value in self._items(node.get("items", []), path):
                dict.__setitem__(obj, key, value)
            for i, v in enumerate(node.get("list", [])):
                list.append(obj, self.decode(v, path + (i,)))
            return obj
        raise ValueError(f"{path}: unknown node {sorted(node)[:3]}")

    def _items(self, pairs: list, path: tuple):
        """The (key, value) pairs `_encode_items` wrote, decoded in order."""
        for i, (k, v) in enumerate(pairs):
            yield self._hashable(self.decode(k, path + ("key", i)), path), self.decode(v, path + (i,))

    def _keep(self, path: tuple, obj: Any) -> Any:
        self.built[path] = obj
        return obj

    @staticmethod
    def _hashable(key: Any, path: tuple) -> Any:
        if isinstance(key, (list, dict, np.ndarray)):
            raise ValueError(f"{path}: unhashable key")
        return key


_MISSING = object()


def _cma_classes() -> dict[str, type]:
    """Every class pycma defines (its options excepted), by the name `encode` writes."""
    found = {}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "cma" or module is None:
            continue
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == name and not issubclass(value, CMAOptions):
                found[f"{name}:{value.__qualname__}"] = value
                for inner in vars(value).values():  # nested classes
                    if isinstance(inner, type) and inner.__module__ == name:
                        found[f"{name}:{inner.__qualname__}"] = inner
    return found


# ---------------------------------------------------------------- the file


def save(path: Path, es: cma.CMAEvolutionStrategy, search: dict, progress: Progress, world: dict | None = None) -> None:
    """Write the search (pycma's object, the recipe's search settings, our progress, numpy's generator, the world it
    searches in) atomically."""
    checkpoints.save(
        path,
        {
            "kind": "cmaes",
            "format": FORMAT,
            "world": world or {},
            "search": dict(search),
            "es": encode(es),
            "progress": encode(dataclasses.asdict(progress)),
            "numpy_random": encode(np.random.get_state()),
        },
    )


def _read(path: Path, search: dict | None) -> dict:
    """The saved file, checked: not an old pickle, this format, and (with `search`) the recipe's search settings."""
    refuse_pickle(Path(path).parent)
    saved = checkpoints.load(path, "cmaes")
    if saved.get("format") != FORMAT:
        raise WorldModelsError(
            f"'{path}' is a search state of format {saved.get('format')!r}; delete it to restart the search"
        )
    for key, value in (search or {}).items():
        was = saved["search"].get(key, SEARCH_DEFAULTS.get(key))
        if key == "dim" and was != value:
            raise WorldModelsError(
                f"'{path}' searches {was} parameters but this controller has {value}; "
                "delete it and controller.pt to start a new search"
            )
        if was != value:
            raise WorldModelsError(
                f"'{path}' holds a search with controller.{key}={was!r} but the recipe says "
                f"{value!r}; restore the recipe's value, or delete it and controller.pt to start a new search"
            )
    return saved


def _rebuilt(path: Path, rebuild: Any) -> Any:
    """`rebuild()`, with any structure the file should not hold turned into one error line."""
    try:
        return rebuild()
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise WorldModelsError(
            f"'{path}' is not a search state this version can rebuild ({exc}); "
            "delete it and controller.pt to restart the search"
        ) from None


def load_progress(path: Path) -> Progress:
    """The search's progress alone (generation, best, history), for readers that do not search:
    no pycma object is built."""
    saved = _read(path, None)
    return _rebuilt(path, lambda: Progress.from_saved(_Decoder(None, {}).decode(saved["progress"])))


def load(path: Path, search: dict | None = None) -> tuple[cma.CMAEvolutionStrategy, Progress, tuple]:
    """(es, progress, numpy's generator state) from `save`'s file; with `search`,
    refused in one line if the recipe's differs."""
    saved = _read(path, search)

    def rebuild() -> tuple[cma.CMAEvolutionStrategy, Progress, tuple]:
        outside = np.random.get_state()  # pycma seeds numpy's global generator when it makes the template
        template = fresh_search(saved["search"])
        np.random.set_state(outside)
        es = _Decoder(template, _cma_classes()).decode(saved["es"])
        if not isinstance(es, cma.CMAEvolutionStrategy):
            raise ValueError("not a CMA-ES search")
        dim = int(saved["search"]["dim"])
        _check_like(template, es, "es")
        _check_ranges(es, dim)
        progress = Progress.from_saved(_Decoder(None, {}).decode(saved["progress"]))
        _check_progress(progress, dim)
        np_state = _Decoder(None, {}).decode(saved["numpy_random"])
        np.random.RandomState().set_state(np_state)  # numpy checks the state's form
        return es, progress, np_state

    return _rebuilt(path, rebuild)


# ---------------------------------------------------------------- the schema a rebuilt search is read against

MAX_GENERATION = config.MAXIMUM["controller.generations"]  # no search state holds more generations than a recipe


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_like(template: Any, rebuilt: Any, path: str, depth: int = 0) -> None:
    """Where the fresh search holds an array, the file's search holds one of the same shape; where it holds a number,
    a finite number (pycma's own objects, three levels deep)."""
    for name, expected in vars(template).items():
        value: Any = getattr(rebuilt, name, None)
        where = f"{path}.{name}"
        if isinstance(expected, np.ndarray):
            if not (isinstance(value, np.ndarray) and value.shape == expected.shape):
                raise ValueError(f"{where} is {_describe(value)}, not an array of shape {expected.shape}")
        elif _number(expected) and not (_number(value) and (math.isfinite(value) or value == expected)):
            raise ValueError(f"{where} is {_describe(value)}, not a finite number")  # pycma's own infinities aside
        elif _cma_class(expected) and depth < 3:
            if type(value) is not type(expected):
                raise ValueError(f"{where} is {_describe(value)}, not a {type(expected).__name__}")
            _check_like(expected, value, where, depth + 1)


def _check_ranges(es: cma.CMAEvolutionStrategy, dim: int) -> None:
    """What the next generation reads first: a finite mean of the controller's size, a positive step, counters."""
    checks = [
        (es.N == dim and np.isfinite(es.mean).all(), "es.mean", f"{dim} finite numbers"),
        (0 < es.sigma < 1e300, "es.sigma", "a positive step size"),
        (0 <= es.countiter <= MAX_GENERATION, "es.countiter", f"a generation from 0 to {MAX_GENERATION:,}"),
        (0 <= es.countevals, "es.countevals", "a count"),
        (np.isfinite(getattr(es.sm, "C", np.zeros(1))).all(), "es.sm.C", "a finite covariance"),
    ]
    for holds, where, expected in checks:
        if not holds:
            raise ValueError(f"{where} is not {expected}")


def _check_progress(p: Progress, dim: int) -> None:
    """Our own record: counters in range, the kept controller and every history entry of the controller's size."""

    def controller(value: Any) -> bool:
        return isinstance(value, np.ndarray) and value.shape == (dim,) and bool(np.isfinite(value).all())

    ceilings = {"generation": MAX_GENERATION, "round_start": MAX_GENERATION, "round": MAX_GENERATION}
    for name in ("generation", "env_steps", "real_steps", "round", "round_start"):
        value = getattr(p, name)
        if not (isinstance(value, int) and 0 <= value <= ceilings.get(name, 10**15)):
            raise ValueError(f"progress.{name} is {_describe(value)}, not a count in range")
    if not (_number(p.best_score) and not np.isnan(p.best_score)) or not (p.best is None or controller(p.best)):
        raise ValueError("progress.best is not a controller of this size with its score")
    for entry in p.history or []:
        if not (isinstance(entry, dict) and controller(entry.get("params")) and _number(entry.get("score"))):
            raise ValueError(f"progress.history holds {_describe(entry)}, not a scored controller of this size")


def _describe(value: Any) -> str:
    """A value as an error line names it: its type, and its shape or value when short."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 40 else text[:37] + '...'}"


def refuse_pickle(run_dir: Path) -> None:
    """An old run folder's `cmaes.pkl` is never unpickled: one line saying how to go on."""
    old = Path(run_dir) / "cmaes.pkl"
    if old.exists():
        raise WorldModelsError(
            f"'{old}' is a pickled CMA-ES state from an older worldmodels; it is not read, because unpickling a file "
            "can run any code it holds. Delete it and controller.pt to restart the search in this folder"
        )
