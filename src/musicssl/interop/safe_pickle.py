"""Read a fairseq checkpoint (a torch pickle) without running its code.

fairseq's own loader (`torch.load(weights_only=False)`) constructs whatever the pickle names:
a checkpoint can run `os.system` on load. Here the unpickler's `find_class` is an allow-list:

- containers and plain values (dict, OrderedDict, list, set, argparse.Namespace, ...);
- torch's tensor rebuild functions and numpy's array / scalar reconstruction;
- OmegaConf nodes (DictConfig, ListConfig, AnyNode, ...), mapped to inert stand-ins that only
  record their pickled state (omegaconf itself is never imported, nor needed);
- `typing` markers and names under `fairseq.` as inert type references: OmegaConf records a
  node's types (typing.Any, a fairseq dataclass) in its metadata. Calling one, i.e. asking to
  construct an object, is refused with its name.

Anything else is refused with its full name before it is looked up: nothing is imported and no
code runs. `to_python` turns the stand-ins into dicts and lists, with `${a.b}` resolved.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import collections
import pickle
import re
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy
import torch


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """The pickle names something outside the allow-list (a ValueError: bad input)."""


class _Recorded:
    """Base of the OmegaConf stand-ins: keeps the state pickle gives it and runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"_state": state}

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class DictConfigStandIn(_Recorded):
    pass


class ListConfigStandIn(_Recorded):
    pass


class ValueNodeStandIn(_Recorded):
    pass


class MetadataStandIn(_Recorded):
    pass


class TypeReference:
    """An inert reference to a type the pickle names; it cannot be called, so it constructs nothing."""

    def __init__(self, qualified_name: str):
        self.qualified_name = qualified_name

    def __call__(self, *args, **kwargs):
        raise UnsafeCheckpointError(f"refused: the checkpoint asks to construct {self.qualified_name}")

    def __repr__(self) -> str:
        return f"<type {self.qualified_name}>"


_OMEGACONF = {
    "omegaconf.dictconfig.DictConfig": DictConfigStandIn,
    "omegaconf.listconfig.ListConfig": ListConfigStandIn,
    "omegaconf.base.Metadata": MetadataStandIn,
    "omegaconf.base.ContainerMetadata": MetadataStandIn,
    **{f"omegaconf.nodes.{name}": ValueNodeStandIn for name in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode", "PathNode",
        "BytesNode", "ValueNode", "InterpolationResultNode")},
}
_MULTIARRAY = getattr(numpy, "_core", None) and numpy._core.multiarray
_ALLOWED: dict[str, Any] = {
    **{f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, str, int, float, bool,
                                              bytes, bytearray, complex, slice)},
    "collections.OrderedDict": collections.OrderedDict,
    # its factory comes from this same allow-list (int, list...), so it can only build those.
    "collections.defaultdict": collections.defaultdict,
    # protocol 2 pickles bytes as _codecs.encode(text, "latin1"); torch's weights_only allows it too.
    "_codecs.encode": codecs.encode,
    "argparse.Namespace": argparse.Namespace,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": torch._utils._rebuild_parameter_with_state,
    "torch.Size": torch.Size,
    "numpy.dtype": numpy.dtype, "numpy.ndarray": numpy.ndarray,
    **{f"{module}.{name}": getattr(_MULTIARRAY, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
    **_OMEGACONF,
}
# numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType etc. (classes, called with no args).
_NUMPY_DTYPE_CLASS = re.compile(r"numpy\.dtypes\.\w+DType$")
_TYPE_REFERENCES = re.compile(r"(typing\.(Any|Dict|List|Tuple|Optional|Union)|builtins\.object|fairseq(\.\w+)+)$")


def allowed_global(module: str, name: str) -> Any:
    """What the unpickler gets for GLOBAL module.name; UnsafeCheckpointError otherwise."""
    qualified = f"{module}.{name}"
    if qualified in _ALLOWED:
        return _ALLOWED[qualified]
    if _NUMPY_DTYPE_CLASS.match(qualified):
        import numpy.dtypes

        return getattr(numpy.dtypes, name)
    if _TYPE_REFERENCES.match(qualified):
        return TypeReference(qualified)
    raise UnsafeCheckpointError(f"refused: the checkpoint references {qualified}, which is not on the "
                                "allow-list of a fairseq checkpoint (nothing was run)")


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 (torch.save's) writes Python 2 names (__builtin__.dict); map them as the
        # default find_class does, then check.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return allowed_global(module, name)


# torch.load takes a pickle module; it wraps our Unpickler (adding only its storage types) and
# feeds tensor storages through its own persistent_load.
# The legacy (pre-zip) format also reads its header with `load`.
allow_list_pickle = types.SimpleNamespace(
    Unpickler=_AllowListUnpickler, load=lambda file, **kwargs: _AllowListUnpickler(file, **kwargs).load(),
    __name__="musicssl_allow_list_pickle")


# What torch.load raises on an empty, truncated or foreign file: the unpickler on garbage
# (UnpicklingError, EOFError, and Index/Key/TypeError/AttributeError from stray opcodes), torch's
# zip reader on a damaged archive (RuntimeError: "PytorchStreamReader failed ..."), zipfile on a
# foreign one, OSError (EINVAL) from a seek past a truncated end. Raised around reading one file
# that exists, they are the file's fault, not a bug.
DAMAGED_CHECKPOINT_ERRORS = (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, OSError, IndexError,
                             KeyError, TypeError, AttributeError, UnicodeDecodeError, OverflowError, MemoryError)


def load_checkpoint(path: str | Path, kind: str = "a fairseq checkpoint") -> dict:
    """The checkpoint dict, tensors on the CPU; OmegaConf nodes as stand-ins (see `to_python`). `kind`
    names what the file should be in the error for a pickle of something else than a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", pickle_module=allow_list_pickle, weights_only=False)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f"{path}: {error}") from None
    except DAMAGED_CHECKPOINT_ERRORS as error:
        raise ValueError(f"{path}: not a readable torch checkpoint (empty, truncated or another format: "
                         f"{type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: {kind} is a dict, found {type(state).__name__}")
    return state


# ---------------------------------------------------------------------------------------------
# stand-ins -> plain Python


def to_python(value: Any) -> Any:
    """Plain dicts / lists / values from OmegaConf stand-ins and Namespaces, `${a.b}` resolved
    against the root (fairseq configs use them, e.g. task.label_rate: ${model.label_rate})."""
    plain = _plain(value)
    return _resolve(plain, plain)


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfigStandIn):
        content = value.state.get("_content")
        return None if not isinstance(content, dict) else {k: _plain(v) for k, v in content.items()}
    if isinstance(value, ListConfigStandIn):
        content = value.state.get("_content")
        return None if not isinstance(content, list) else [_plain(v) for v in content]
    if isinstance(value, ValueNodeStandIn):
        return _plain(value.state.get("_val"))
    if isinstance(value, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, numpy.generic):
        return value.item()
    return value


_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def _resolve(value: Any, root: dict, depth: int = 0) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, root, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, depth) for v in value]
    match = _INTERPOLATION.match(value) if isinstance(value, str) else None
    if match and depth < 10:
        target: Any = root
        for part in match.group(1).split("."):
            if not isinstance(target, dict) or part not in target:
                return value  # unresolvable: left as written
            target = target[part]
        return _resolve(target, root, depth + 1)
    return value
