"""An estimator tree as JSON plus arrays, and back, for an explicit list of classes.

An estimator of this package (or a :class:`~sklearn.pipeline.Pipeline`) becomes a
node: its class name, its ``get_params(deep=False)`` and its fitted attributes (the
public ones ending in ``_``). Values are JSON; what JSON cannot say is a one-key
object whose key starts with ``$``: arrays (stored in safetensors), tuples, numpy
scalars, string arrays, a ``RandomState``, an estimator, a second reference to
one, or a scikit-learn estimator of another library serialised by skops (see
:mod:`._foreign`). Torch modules inside fitted estimators are stored
as state dicts by :mod:`._torch_state` and rebuilt from the parameters.

Adding a model class means adding it to ``PACKAGE_CLASSES``; if its fitted
state holds torch modules (or a torch device), also a hook to ``_TORCH_HOOKS``
that says which attributes it stores and how it rebuilds them.
"""

import collections.abc
import functools
import importlib
import math
import os
import re
import sys
import types

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import InvalidParameterError

from ._archive import ModelFileError, module_refusal

# Every class a model file may name: name in the file -> (module, attribute).
PACKAGE_CLASSES = {
    "sklearn_metarefine.MetaRefineDetector": (
        "sklearn_metarefine._detector",
        "MetaRefineDetector",
    ),
    "sklearn_metarefine.IQRRefiner": ("sklearn_metarefine._refine", "IQRRefiner"),
    "sklearn_metarefine.FlowDetector": ("sklearn_metarefine._flows", "FlowDetector"),
    "sklearn_metarefine.MAMLFlowDetector": (
        "sklearn_metarefine._flows",
        "MAMLFlowDetector",
    ),
    "sklearn_metarefine.PretrainedFeatures": (
        "sklearn_metarefine._features",
        "PretrainedFeatures",
    ),
    "sklearn_metarefine.PatchFeatures": (
        "sklearn_metarefine._features",
        "PatchFeatures",
    ),
    "sklearn_metarefine.PatchCoreDetector": (
        "sklearn_metarefine._patch",
        "PatchCoreDetector",
    ),
    "sklearn_metarefine.PatchFlowDetector": (
        "sklearn_metarefine._patch",
        "PatchFlowDetector",
    ),
    "sklearn.pipeline.Pipeline": ("sklearn.pipeline", "Pipeline"),
}

# Classes whose fitted state holds torch modules -> the function of
# sklearn_metarefine._persistence._torch_state that returns their hook.
_TORCH_HOOKS = {
    "sklearn_metarefine.FlowDetector": "flow_hook",
    "sklearn_metarefine.MAMLFlowDetector": "flow_hook",
    "sklearn_metarefine.PretrainedFeatures": "features_hook",
    "sklearn_metarefine.PatchFeatures": "patch_features_hook",
    "sklearn_metarefine.PatchCoreDetector": "device_hook",
}

_FITTED_NAME = re.compile(r"[a-z][a-z0-9_]*_")
# Parameters that belong to the machine, not to the model: a cache folder
# (``memory``) is neither stored nor taken from a file, which would otherwise
# choose where scoring writes.
_MACHINE_PARAMS = {"memory": None}
_NUMERIC_KINDS = "biuf"
_NODE_KEYS = {"class", "id", "params", "fitted", "torch_state", "output_config"}
# What scikit-learn's set_output records on an estimator, and its values.
_OUTPUT_CONFIG = "_sklearn_output_config"
_OUTPUT_CONTAINERS = {"default", "pandas", "polars"}


def _class_name(cls):
    """The allow-list name of ``cls``, or None for any other class.

    Only classes whose module is already imported can match, so that saving a
    scikit-learn model does not import torch to compare it with the flows.
    """
    for name, (module, attribute) in PACKAGE_CLASSES.items():
        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, attribute, None) is cls:
            return name
    return None


def _functions_without_a_module_name(estimator):
    """The functions among ``estimator``'s parameters (and in partials of
    them) that skops would store as ``module.name`` but that are not there:
    lambdas, functions defined inside another, methods."""
    found = []
    values = list(estimator.get_params(deep=True).values())
    while values:
        value = values.pop()
        if isinstance(value, functools.partial):
            values += [value.func, *value.args, *value.keywords.values()]
        elif isinstance(value, (list, tuple)):
            values += value
        elif isinstance(value, dict):
            values += value.values()
        elif (
            isinstance(value, types.FunctionType)
            and value.__qualname__ != value.__name__
        ) or (isinstance(value, types.MethodType) and isinstance(value.__self__, type)):
            found.append(f"{value.__module__}.{value.__qualname__}")
    return sorted(found)


def _allowed_class(name, where):
    if not isinstance(name, str) or name not in PACKAGE_CLASSES:
        raise SchemaError(
            f"{where} names class {name!r}, which is not one of the classes a "
            f"model file may hold ({', '.join(sorted(PACKAGE_CLASSES))}); refusing "
            "to load it."
        )
    module, attribute = PACKAGE_CLASSES[name]
    return getattr(importlib.import_module(module), attribute)


def _not_stored(estimator_or_class):
    """The machine parameters of an estimator, at the values a model file gives."""
    names = estimator_or_class._get_param_names()
    return {name: value for name, value in _MACHINE_PARAMS.items() if name in names}


def _output_config(config, where, error):
    """``set_output``'s record, checked: the output container of ``transform``."""
    if (
        not isinstance(config, dict)
        or not set(config) <= {"transform"}
        or not set(config.values()) <= _OUTPUT_CONTAINERS
    ):
        raise error(
            f"{where}: set_output recorded {config!r}; a model file holds only "
            f"set_output(transform=...) with one of {sorted(_OUTPUT_CONTAINERS)}."
        )
    return dict(config)


def _torch_hook(name):
    if name not in _TORCH_HOOKS:
        return None
    from . import _torch_state

    return getattr(_torch_state, _TORCH_HOOKS[name])()


def _imported_torch():
    """torch if something imported it (a torch value implies it), else None."""
    return sys.modules.get("torch")


class Encoder:
    """Turns an estimator tree into a JSON-able node, arrays and skops members."""

    def __init__(self):
        self.arrays = {}
        self.skops = []
        self.untrusted_types = set()
        self._array_keys = {}
        self._estimator_refs = {}
        self._n_nodes = 0
        # Objects whose id() is memoised stay alive until encoding ends, so
        # that no id is reused by another object meanwhile.
        self._alive = []

    def estimator(self, estimator, where):
        """The node of ``estimator`` (or a reference to its earlier node)."""
        if id(estimator) in self._estimator_refs:
            return self._estimator_refs[id(estimator)]
        self._alive.append(estimator)
        name = _class_name(type(estimator))
        if name is None:
            return self._foreign(estimator, where)
        node = {"class": name, "id": self._n_nodes}
        self._estimator_refs[id(estimator)] = {"$ref": self._n_nodes}
        self._n_nodes += 1
        hook = _torch_hook(name)
        # First, so that what the hook refuses is refused with its reason.
        torch_state = hook.dump(estimator, where) if hook else None
        params = {**estimator.get_params(deep=False), **_not_stored(estimator)}
        node["params"] = {k: self.value(v, f"{where}.{k}") for k, v in params.items()}
        handled = set(params) | (hook.attributes if hook else set())
        fitted = {}
        for attribute, value in vars(estimator).items():
            if attribute in handled:
                continue
            if attribute == _OUTPUT_CONFIG:  # set_output(transform=...)
                config = _output_config(value, where, TypeError)
                node["output_config"] = self.value(config, f"{where}.set_output")
                continue
            if not _FITTED_NAME.fullmatch(attribute):
                raise TypeError(
                    f"Cannot save {where}: its attribute {attribute!r} is neither "
                    "a parameter nor a fitted attribute, and a model file holds "
                    "only those."
                )
            fitted[attribute] = self.value(value, f"{where}.{attribute}")
        node["fitted"] = fitted
        if torch_state is not None:
            node["torch_state"] = self.value(torch_state, where)
        return {"$estimator": node}

    def _foreign(self, estimator, where):
        from . import _foreign

        unnamed = _functions_without_a_module_name(estimator)
        if not unnamed:
            data = _foreign.dumps(estimator, where)
            untrusted = _foreign.untrusted_types(data, ())
            # Wherever skops found them (fitted state too): "<lambda>".
            unnamed = [name for name in untrusted if "<" in name]
        if unnamed:  # the file would load under no trusted= at all
            raise TypeError(
                f"Cannot save {where}: it holds {unnamed}, which no load can "
                "import back by name. Use a function defined at the top of a "
                "module."
            )
        self.untrusted_types.update(untrusted)
        self.skops.append(data)
        reference = {"$skops": len(self.skops) - 1}
        self._estimator_refs[id(estimator)] = reference
        return reference

    def value(self, value, where):
        """The JSON form of one parameter or fitted value."""
        if isinstance(value, np.generic):
            return self._scalar(value, where)
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, np.ndarray):
            return self._array(value, where)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, list):
            return [self.value(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {
                "$tuple": [self.value(v, f"{where}[{i}]") for i, v in enumerate(value)]
            }
        if isinstance(value, dict):
            return {"$dict": self._dict(value, where)}
        if type(value) is np.random.RandomState:
            _, keys, pos, has_gauss, gauss = value.get_state()
            state = {"keys": keys, "pos": pos, "has_gauss": has_gauss, "gauss": gauss}
            return {"$random_state": self._dict(state, where)}
        torch = _imported_torch()
        if torch is not None and isinstance(value, torch.device):
            return str(value)
        if hasattr(value, "get_params") and not isinstance(value, type):
            return self.estimator(value, where)
        module = torch is not None and isinstance(value, torch.nn.Module)
        if module and where.endswith(".backbone"):
            # A backbone given as a module (MetaRefineDetector(net)): no hook
            # of the classes that rebuild backbones gets to say so first.
            raise TypeError(module_refusal(where.rsplit(".", 1)[0], value))
        raise TypeError(
            f"Cannot save {where}: a {type(value).__module__}."
            f"{type(value).__qualname__} is none of the values a model file holds "
            "(numbers, strings, lists, tuples, dicts, numpy arrays, estimators)."
        )

    def _dict(self, value, where):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"Cannot save {where}: a dict with non-string keys.")
        return {k: self.value(v, f"{where}[{k!r}]") for k, v in value.items()}

    def _scalar(self, value, where):
        if value.dtype.kind == "U":
            return str(value)
        if value.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"Cannot save {where}: a numpy {value.dtype} scalar.")
        item = value.item()
        if isinstance(item, np.generic):  # longdouble: no Python equivalent
            raise TypeError(f"Cannot save {where}: a numpy {value.dtype} scalar.")
        return {"$scalar": {"dtype": value.dtype.str, "value": self.value(item, where)}}

    def _array(self, array, where):
        if id(array) in self._array_keys:
            return {"$array": self._array_keys[id(array)]}
        if array.dtype.kind in "OU":
            if not all(isinstance(item, str) for item in array.flat):
                raise TypeError(
                    f"Cannot save {where}: an array of {array.dtype} that does "
                    "not hold only strings."
                )
            return {
                "$strings": {
                    "values": [str(item) for item in array.flat],
                    "shape": list(array.shape),
                    "dtype": array.dtype.str,
                }
            }
        if array.dtype.kind not in _NUMERIC_KINDS or array.dtype.itemsize > 8:
            # Extended precision (float96, float128) is no safetensors dtype.
            raise TypeError(f"Cannot save {where}: an array of dtype {array.dtype}.")
        key = str(len(self.arrays))
        self.arrays[key] = np.require(array, requirements="C")
        self._array_keys[id(array)] = key
        self._alive.append(array)
        return {"$array": key}


class SchemaError(ModelFileError):
    """A class, parameter or attribute this version of the package does not
    have or accept: the file may come from another release."""


class DeviceUnavailableError(ValueError):
    """The device a model file's components ask for is not on this machine."""


class Decoder:
    """Rebuilds an estimator tree from its node, arrays and skops members.

    Every class is checked against ``PACKAGE_CLASSES`` before it is imported,
    every value against the tags the encoder writes; what fails is refused
    with :class:`ModelFileError`.
    """

    def __init__(self, arrays, skops, *, device, trusted):
        self.arrays = arrays
        self.skops = skops
        self.device = device
        names = (
            None
            if isinstance(trusted, (str, bytes))
            or not isinstance(trusted, collections.abc.Iterable)
            else tuple(trusted)
        )
        if names is None or not all(isinstance(name, str) for name in names):
            raise TypeError(
                "load's trusted must be a list of type names, such as "
                f"trusted=['pyod.models.knn.KNN']; got {trusted!r}."
            )
        self.trusted = names
        self._estimators = []
        self._decoded_arrays = {}
        self._decoded_skops = {}
        self._tags = {
            "$estimator": self._estimator,
            "$ref": self._ref,
            "$skops": self._foreign,
            "$array": self._array,
            "$strings": self._strings,
            "$scalar": self._scalar,
            "$float": self._float,
            "$tuple": lambda items, where: tuple(self.value(items, where)),
            "$dict": self._dict,
            "$random_state": self._random_state,
        }

    def value(self, data, where):
        if data is None or isinstance(data, (bool, str, int, float)):
            return data
        if isinstance(data, list):
            return [self.value(item, f"{where}[{i}]") for i, item in enumerate(data)]
        if isinstance(data, dict) and len(data) == 1:
            ((tag, payload),) = data.items()
            if tag in self._tags:
                return self._tags[tag](payload, where)
        raise SchemaError(  # perhaps a kind of value a later release writes
            f"{where}: unknown value {str(data)[:80]!r} in the manifest."
        )

    def _typed(self, value, types, where):
        types = types if isinstance(types, tuple) else (types,)
        # JSON's true and false are ints to isinstance; an id or an index is not.
        if not isinstance(value, types) or (
            isinstance(value, bool) and bool not in types
        ):
            raise ModelFileError(f"{where}: malformed value {str(value)[:80]!r}.")
        return value

    def _dict(self, payload, where):
        payload = self._typed(payload, dict, where)
        return {k: self.value(v, f"{where}[{k!r}]") for k, v in payload.items()}

    def _estimator(self, node, where):
        node = self._typed(node, dict, where)
        if not set(node) <= _NODE_KEYS or not {"class", "id", "params"} <= set(node):
            raise ModelFileError(f"{where}: malformed estimator node {sorted(node)}.")
        cls = _allowed_class(node["class"], where)
        if node["id"] != len(self._estimators):
            raise ModelFileError(f"{where}: estimator ids out of order.")
        self._estimators.append(None)
        where = f"{where}({cls.__name__})"
        params = self._dict(node["params"], where)
        unknown = set(params) - set(cls._get_param_names())
        if unknown:
            raise SchemaError(
                f"{where}: parameters {sorted(unknown)} are not parameters of "
                f"{cls.__name__} in this version of the package."
            )
        if self.device is not None and "device" in params:
            params["device"] = self.device
        params.update(_not_stored(cls))
        estimator = cls(**params)
        try:
            estimator._validate_params()
        except InvalidParameterError as error:
            raise SchemaError(f"{where}: {error}") from None
        for attribute, value in self._typed(
            node.get("fitted", {}), dict, where
        ).items():
            if not _FITTED_NAME.fullmatch(attribute) or hasattr(cls, attribute):
                raise SchemaError(
                    f"{where}: {attribute!r} cannot be a fitted attribute."
                )
            setattr(estimator, attribute, self.value(value, f"{where}.{attribute}"))
        if "output_config" in node:
            config = self.value(node["output_config"], f"{where}.set_output")
            config = _output_config(config, where, ModelFileError)
            setattr(estimator, _OUTPUT_CONFIG, config)
        if "torch_state" in node:
            self._restore_torch_state(estimator, node, where)
        self._estimators[node["id"]] = estimator
        return estimator

    def _restore_torch_state(self, estimator, node, where):
        from ._torch_state import device_of

        hook = _torch_hook(node["class"])
        if hook is None:
            raise ModelFileError(f"{where}: {node['class']} holds no torch state.")
        state = self._typed(self.value(node["torch_state"], where), dict, where)
        # Outside the try: no CUDA for device="cuda" is the machine's problem,
        # not the file's.
        try:
            device = device_of(estimator)
        except ValueError as error:
            raise DeviceUnavailableError(
                f"{where}: {error} To load the model on this machine, pass "
                "load(path, device='cpu') or device='auto'."
            ) from None
        try:
            hook.restore(estimator, state, device)
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            # Perhaps a flow of another release's layout.
            raise SchemaError(f"{where}: invalid torch state ({error}).") from None

    def _ref(self, index, where):
        index = self._typed(index, int, where)
        if not 0 <= index < len(self._estimators) or self._estimators[index] is None:
            raise ModelFileError(f"{where}: reference to an unknown estimator.")
        return self._estimators[index]

    def _foreign(self, index, where):
        from . import _foreign

        index = self._typed(index, int, where)
        if index not in self._decoded_skops:
            if not 0 <= index < len(self.skops):
                raise ModelFileError(f"{where}: no skops member {index}.")
            self._decoded_skops[index] = _foreign.loads(
                self.skops[index], self.trusted, where
            )
        return self._decoded_skops[index]

    def _array(self, key, where):
        key = self._typed(key, str, where)
        if key not in self.arrays:
            raise ModelFileError(f"{where}: array {key!r} is not in the file.")
        if key not in self._decoded_arrays:
            self._decoded_arrays[key] = self.arrays[key]
        return self._decoded_arrays[key]

    def _dtype(self, payload, kinds, where):
        try:
            dtype = np.dtype(self._typed(payload.get("dtype"), str, where))
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in kinds:
            raise ModelFileError(f"{where}: dtype {payload.get('dtype')!r} refused.")
        return dtype

    def _strings(self, payload, where):
        payload = self._typed(payload, dict, where)
        values = self._typed(payload.get("values"), list, where)
        shape = self._typed(payload.get("shape"), list, where)
        dtype = self._dtype(payload, "OU", where)
        if not all(isinstance(v, str) for v in values) or not all(
            isinstance(n, int) for n in shape
        ):
            raise ModelFileError(f"{where}: malformed string array.")
        try:
            return np.array(values, dtype=dtype).reshape(shape)
        except ValueError as error:
            raise ModelFileError(
                f"{where}: malformed string array ({error})."
            ) from None

    def _scalar(self, payload, where):
        payload = self._typed(payload, dict, where)
        dtype = self._dtype(payload, _NUMERIC_KINDS, where)
        value = self._typed(payload.get("value"), (bool, int, float, dict), where)
        try:
            return dtype.type(self.value(value, where))
        except (OverflowError, TypeError, ValueError) as error:
            raise ModelFileError(
                f"{where}: malformed numpy scalar ({error})."
            ) from None

    def _float(self, text, where):
        if text not in ("nan", "inf", "-inf"):
            raise ModelFileError(f"{where}: malformed float {text!r}.")
        return float(text)

    def _random_state(self, payload, where):
        state = self._dict(payload, where)
        random_state = np.random.RandomState()
        try:
            random_state.set_state(
                (
                    "MT19937",
                    state["keys"],
                    state["pos"],
                    state["has_gauss"],
                    state["gauss"],
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{where}: malformed RandomState ({error}).") from None
        return random_state


def nested_estimators(estimator):
    """``estimator`` and every scikit-learn estimator in its parameters and
    fitted attributes, recursively, each once."""
    seen, pending = set(), [estimator]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(reversed(list(_estimators_in(list(vars(current).values())))))


def _estimators_in(value):
    if isinstance(value, BaseEstimator):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _estimators_in(item)
    elif isinstance(value, dict):
        yield from _estimators_in(list(value.values()))
