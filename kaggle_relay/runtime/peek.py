"""Read the object tree of a torch checkpoint pickle without importing torch or running code.

``peek_pickle`` interprets the pickle opcodes itself, the same subset that
torch's ``weights_only`` unpickler accepts (torch 2.x,
``torch/_weights_only_unpickler.py``). It never resolves a global to a real
object: every global becomes a name, the torch rebuild functions are
interpreted by name into ``TensorRef`` placeholders (dtype, shape, storage
key), and any other global becomes an ``Opaque`` value that absorbs calls and
state. So a pickle that would run code is read as data and only reported.

What it returns: the rebuilt tree (dicts, lists, numbers, strings and
placeholders), every global referenced, the globals ``weights_only`` blocks,
and every storage the tensors point at, so the caller can check that the
bytes behind each tensor are present.
"""

from __future__ import annotations

import collections
import pickletools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# --- torch's weights_only allowlist (torch 2.13, _get_allowed_globals) ---------

# Bytes per element of each dtype that torch pickles as a global ``torch.<dtype>``.
DTYPE_ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "complex128": 16, "complex64": 8, "complex32": 4,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1,
    "qint8": 1, "qint32": 4, "quint8": 1, "quint4x2": 1, "quint2x4": 1,
    "float8_e5m2": 1, "float8_e4m3fn": 1, "float8_e5m2fnuz": 1, "float8_e4m3fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1,
    "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    **{f"int{bits}": 1 for bits in range(1, 8)},
    **{f"uint{bits}": 1 for bits in range(1, 8)},
}  # fmt: skip

# Legacy typed storage classes and the dtype of their elements.
STORAGE_DTYPE: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "QInt8Storage": "qint8", "QInt32Storage": "qint32",
    "QUInt8Storage": "quint8", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
}  # fmt: skip

_TENSOR_CLASSES = ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
_DENSE_ONLY = ("Bool",)  # torch has no sparse BoolTensor class
_CUDA_STORAGES = tuple(name for name in STORAGE_DTYPE if not name.startswith("Q"))

REBUILD_FUNCTIONS = frozenset(
    f"torch._utils.{name}"
    for name in (
        "_rebuild_parameter", "_rebuild_parameter_with_state", "_rebuild_qtensor",
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_sparse_tensor",
        "_rebuild_meta_tensor_no_storage", "_rebuild_nested_tensor", "_rebuild_wrapper_subclass",
        "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor",
    )
)  # fmt: skip


def _build_allowlist() -> frozenset[str]:
    names = {
        "collections.OrderedDict", "collections.Counter", "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout", "torch.Size", "torch.Tensor", "torch.device",
        "_codecs.encode", "builtins.bytearray", "builtins.set", "builtins.complex",
        "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
        "torch._tensor._rebuild_from_type_v2",
        "torch.per_tensor_affine", "torch.per_tensor_symmetric", "torch.per_channel_affine",
        "torch.per_channel_symmetric", "torch.per_channel_affine_float_qparams",
    }  # fmt: skip
    names.update(f"torch.{dtype}" for dtype in DTYPE_ITEMSIZE)
    names.update(f"torch.{storage}" for storage in STORAGE_DTYPE)
    names.update(f"torch.cuda.{storage}" for storage in _CUDA_STORAGES)
    for kind in _TENSOR_CLASSES:
        names.update({f"torch.{kind}Tensor", f"torch.cuda.{kind}Tensor"})
        if kind not in _DENSE_ONLY:
            names.update({f"torch.sparse.{kind}Tensor", f"torch.cuda.sparse.{kind}Tensor"})
    names.update(REBUILD_FUNCTIONS)
    return frozenset(names)


#: Every global that ``torch.load(weights_only=True)`` accepts without an allowlist.
WEIGHTS_ONLY_GLOBALS = _build_allowlist()

#: Modules torch refuses even when a user allowlists one of their names.
BLOCKED_MODULES = ("sys", "os", "posix", "nt")

# Python 2 names that torch renames before the allowlist lookup (torch._utils).
_IMPORT_MAPPING = {"__builtin__": "builtins", "copy_reg": "copyreg", "UserDict": "collections"}
_NAME_MAPPING = {("__builtin__", "unicode"): ("builtins", "str"), ("__builtin__", "long"): ("builtins", "int")}


# --- placeholders ---------------------------------------------------------------


@dataclass(frozen=True)
class StorageRef:
    """A tensor storage named by a persistent id; ``numel`` counts elements of ``dtype``."""

    key: str
    dtype: str
    numel: int
    location: str = "cpu"

    @property
    def itemsize(self) -> int:
        return DTYPE_ITEMSIZE.get(self.dtype, 1)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass
class TensorRef:
    """A tensor that was not loaded: its dtype, shape and where its bytes live."""

    dtype: str
    shape: tuple[int, ...]
    storage: StorageRef | None = None
    offset: int = 0
    stride: tuple[int, ...] = ()
    parameter: bool = False

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    def storage_bytes_needed(self) -> int:
        """Return how many bytes of the storage the tensor reaches, from the storage start."""
        if self.numel == 0:
            return 0
        extent = 1 + sum((size - 1) * step for size, step in zip(self.shape, self.stride, strict=False))
        return (self.offset + extent) * DTYPE_ITEMSIZE.get(self.dtype, 1)

    def __repr__(self) -> str:
        return f"TensorRef({self.dtype}, {list(self.shape)})"


@dataclass(frozen=True)
class GlobalRef:
    """A global named by the pickle, never imported."""

    module: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Opaque:
    """A value built by a global that weights_only blocks; it records calls instead of running them."""

    origin: str
    args: Any = None
    state: Any = None

    def __repr__(self) -> str:
        return f"<{self.origin}>"


@dataclass
class PeekResult:
    """The findings of a restricted read of one pickle."""

    root: Any
    globals: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    storages: dict[str, StorageRef] = field(default_factory=dict)
    tensors: list[TensorRef] = field(default_factory=list)
    protocol: int = 0
    end: int = 0

    @property
    def loads_weights_only(self) -> bool:
        return not self.blocked


class PickleNotSupportedError(ValueError):
    """The stream uses something torch's weights_only loader rejects, other than a global.

    Internal to the runtime: ``formats`` turns it into a candidate's reason.
    """


# --- the interpreter ----------------------------------------------------------

PersistentLoad = Callable[[tuple[Any, ...]], Any]


def peek_pickle(data: Any, *, start: int = 0, persistent_load: PersistentLoad | None = None) -> PeekResult:
    """Interpret one pickle in ``data`` (bytes, memoryview or mmap) from ``start`` up to STOP.

    Raises PickleNotSupportedError for an opcode or construct that torch's
    weights_only loader rejects, and EOFError when the data ends before STOP.
    """
    reader = _Interpreter(data, start, persistent_load)
    root = reader.run()
    return PeekResult(
        root=root,
        globals=list(reader.globals),
        blocked=list(reader.blocked),
        storages=reader.storages,
        tensors=reader.tensors,
        protocol=reader.protocol,
        end=reader.pos,
    )


_OP = {name: ord(code) for name, code in (
    ("GLOBAL", "c"), ("NEWOBJ", "\x81"), ("REDUCE", "R"), ("BUILD", "b"), ("APPEND", "a"),
    ("APPENDS", "e"), ("SETITEM", "s"), ("SETITEMS", "u"), ("MARK", "("), ("TUPLE", "t"),
    ("TUPLE1", "\x85"), ("TUPLE2", "\x86"), ("TUPLE3", "\x87"), ("NONE", "N"),
    ("NEWFALSE", "\x89"), ("NEWTRUE", "\x88"), ("EMPTY_TUPLE", ")"), ("EMPTY_LIST", "]"),
    ("EMPTY_DICT", "}"), ("EMPTY_SET", "\x8f"), ("BININT", "J"), ("BININT1", "K"),
    ("BININT2", "M"), ("BINFLOAT", "G"), ("BINUNICODE", "X"), ("SHORT_BINSTRING", "U"),
    ("BINPERSID", "Q"), ("BINGET", "h"), ("LONG_BINGET", "j"), ("BINPUT", "q"),
    ("LONG_BINPUT", "r"), ("LONG1", "\x8a"), ("PROTO", "\x80"), ("STOP", "."),
)}  # fmt: skip


class _Interpreter:
    """A pickle machine for torch's weights_only opcode subset that never imports anything."""

    def __init__(self, data: Any, start: int, persistent_load: PersistentLoad | None) -> None:
        self.data = data
        self.pos = start
        self.size = len(data)
        self.persistent_load = persistent_load or _zip_storage
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.globals: dict[str, None] = {}
        self.blocked: dict[str, None] = {}
        self.storages: dict[str, StorageRef] = {}
        self.tensors: list[TensorRef] = []
        self.protocol = 0
        self.handlers = self._handler_table()

    def _read(self, count: int) -> Any:
        end = self.pos + count
        if end > self.size:
            raise EOFError(f"pickle data ends at byte {self.size}, inside an opcode at byte {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _readline(self) -> str:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise EOFError("pickle data ends inside a GLOBAL name")
        line = bytes(self.data[self.pos : end]).decode("utf-8")
        self.pos = end + 1
        return line

    def run(self) -> Any:
        data, handlers, stop = self.data, self.handlers, _OP["STOP"]
        while True:
            if self.pos >= self.size:
                raise EOFError(f"pickle data ends at byte {self.size} before its STOP opcode")
            code = data[self.pos]
            self.pos += 1
            if code == stop:
                return self.stack.pop()
            handler = handlers.get(code)
            if handler is None:
                raise PickleNotSupportedError(_unsupported_opcode(code, self.pos - 1, self.protocol))
            handler()

    def _handler_table(self) -> dict[int, Callable[[], None]]:
        return {
            _OP["GLOBAL"]: self._global,
            _OP["NEWOBJ"]: self._newobj,
            _OP["REDUCE"]: self._reduce,
            _OP["BUILD"]: self._build,
            _OP["APPEND"]: self._append,
            _OP["APPENDS"]: self._appends,
            _OP["SETITEM"]: self._setitem,
            _OP["SETITEMS"]: self._setitems,
            _OP["MARK"]: self._mark,
            _OP["TUPLE"]: self._tuple,
            _OP["TUPLE1"]: lambda: self._tuple_n(1),
            _OP["TUPLE2"]: lambda: self._tuple_n(2),
            _OP["TUPLE3"]: lambda: self._tuple_n(3),
            _OP["NONE"]: lambda: self.stack.append(None),
            _OP["NEWFALSE"]: lambda: self.stack.append(False),
            _OP["NEWTRUE"]: lambda: self.stack.append(True),
            _OP["EMPTY_TUPLE"]: lambda: self.stack.append(()),
            _OP["EMPTY_LIST"]: lambda: self.stack.append([]),
            _OP["EMPTY_DICT"]: lambda: self.stack.append({}),
            _OP["EMPTY_SET"]: lambda: self.stack.append(set()),
            _OP["BININT"]: lambda: self.stack.append(struct.unpack("<i", self._read(4))[0]),
            _OP["BININT1"]: lambda: self.stack.append(self._read(1)[0]),
            _OP["BININT2"]: lambda: self.stack.append(struct.unpack("<H", self._read(2))[0]),
            _OP["BINFLOAT"]: lambda: self.stack.append(struct.unpack(">d", self._read(8))[0]),
            _OP["BINUNICODE"]: self._binunicode,
            _OP["SHORT_BINSTRING"]: lambda: self.stack.append(bytes(self._read(self._read(1)[0]))),
            _OP["BINPERSID"]: self._binpersid,
            _OP["BINGET"]: lambda: self.stack.append(self._memo_get(self._read(1)[0])),
            _OP["LONG_BINGET"]: lambda: self.stack.append(self._memo_get(struct.unpack("<I", self._read(4))[0])),
            _OP["BINPUT"]: lambda: self._memo_put(self._read(1)[0]),
            _OP["LONG_BINPUT"]: lambda: self._memo_put(struct.unpack("<I", self._read(4))[0]),
            _OP["LONG1"]: lambda: self.stack.append(int.from_bytes(bytes(self._read(self._read(1)[0])), "little", signed=True)),
            _OP["PROTO"]: self._proto,
        }  # fmt: skip

    # stack helpers

    def _mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise PickleNotSupportedError("malformed pickle: a MARK is missing")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _tuple(self) -> None:
        items = tuple(self._pop_mark())
        self.stack.append(items)

    def _tuple_n(self, count: int) -> None:
        items = tuple(self.stack[-count:])
        del self.stack[-count:]
        self.stack.append(items)

    def _memo_get(self, index: int) -> Any:
        try:
            return self.memo[index]
        except KeyError:
            raise PickleNotSupportedError(f"malformed pickle: memo entry {index} is missing") from None

    def _memo_put(self, index: int) -> None:
        self.memo[index] = self.stack[-1]

    def _proto(self) -> None:
        self.protocol = self._read(1)[0]

    def _binunicode(self) -> None:
        length = struct.unpack("<I", self._read(4))[0]
        self.stack.append(str(bytes(self._read(length)), "utf-8", "surrogatepass"))

    # risky opcodes: interpreted by name, never executed

    def _global(self) -> None:
        module, name = self._readline(), self._readline()
        if (module, name) in _NAME_MAPPING:
            module, name = _NAME_MAPPING[(module, name)]
        else:
            module = _IMPORT_MAPPING.get(module, module)
        ref = GlobalRef(module, name)
        full = ref.full_name
        self.globals[full] = None
        if full not in WEIGHTS_ONLY_GLOBALS:
            self.blocked[full] = None
        self.stack.append(ref)

    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self.stack[-1] = self._call(func, args)

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if isinstance(cls, GlobalRef) and cls.full_name == "torch.nn.parameter.Parameter" and args:
            self.stack.append(_as_parameter(args[0]))
        else:
            self.stack.append(Opaque(_origin(cls), args))

    def _build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, Opaque):
            target.state = state
        elif isinstance(target, collections.OrderedDict | collections.Counter):
            if isinstance(state, dict):
                target.__dict__.update({key: value for key, value in state.items() if isinstance(key, str)})
        elif not isinstance(target, TensorRef):
            raise PickleNotSupportedError(f"BUILD on a {type(target).__name__}, which weights_only rejects")

    def _append(self) -> None:
        item = self.stack.pop()
        self._extend(self.stack[-1], [item])

    def _appends(self) -> None:
        items = self._pop_mark()
        self._extend(self.stack[-1], items)

    def _extend(self, target: Any, items: list[Any]) -> None:
        if type(target) is list:
            target.extend(items)
        elif not isinstance(target, Opaque):
            raise PickleNotSupportedError(f"APPEND to a {type(target).__name__}, which weights_only rejects")

    def _setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def _setitems(self) -> None:
        items = self._pop_mark()
        self._set_items(self.stack[-1], items)

    def _set_items(self, target: Any, items: list[Any]) -> None:
        if isinstance(target, Opaque):
            return
        if type(target) not in (dict, collections.OrderedDict, collections.Counter):
            raise PickleNotSupportedError(f"SETITEM on a {type(target).__name__}, which weights_only rejects")
        try:
            for index in range(0, len(items), 2):
                target[items[index]] = items[index + 1]
        except TypeError as exc:
            raise PickleNotSupportedError(f"a dict key is not hashable ({exc})") from None

    def _binpersid(self) -> None:
        pid = self.stack.pop()
        if type(pid) is not tuple and type(pid) is not int:
            raise PickleNotSupportedError(f"persistent id is a {type(pid).__name__}, not a tuple")
        if type(pid) is tuple and (not pid or _ascii(pid[0]) != "storage"):
            raise PickleNotSupportedError("persistent id does not name a storage")
        storage = self.persistent_load(pid) if type(pid) is tuple else Opaque("persistent id", pid)
        if isinstance(storage, StorageRef):
            self.storages.setdefault(storage.key, storage)
        self.stack.append(storage)

    def _call(self, func: Any, args: Any) -> Any:
        if isinstance(func, Opaque) or (isinstance(func, GlobalRef) and func.full_name in self.blocked):
            return Opaque(_origin(func), args)
        if not isinstance(func, GlobalRef):
            raise PickleNotSupportedError(f"REDUCE calls a {type(func).__name__}, which weights_only rejects")
        if not isinstance(args, tuple):
            raise PickleNotSupportedError("REDUCE arguments are not a tuple")
        try:
            result = _call_allowed(func.full_name, args)
        except (TypeError, ValueError, IndexError, OverflowError) as exc:
            raise PickleNotSupportedError(f"{func.full_name} called with unexpected arguments ({exc})") from None
        if isinstance(result, TensorRef):
            self.tensors.append(result)
        return result


# --- the allowed globals, interpreted by name -----------------------------------


def _call_allowed(name: str, args: tuple[Any, ...]) -> Any:
    handler = _CALLS.get(name)
    if handler is not None:
        return handler(*args)
    if name in REBUILD_FUNCTIONS or name.endswith("Tensor"):
        return TensorRef(dtype="unknown", shape=())
    return Opaque(name, args)


def _rebuild_v2(storage: Any, offset: int, size: Any, stride: Any, *_rest: Any) -> TensorRef:
    dtype = storage.dtype if isinstance(storage, StorageRef) else "unknown"
    return _tensor(storage, dtype, offset, size, stride)


def _rebuild_v3(storage: Any, offset: int, size: Any, stride: Any, _grad: Any, _hooks: Any, dtype: Any, *_rest: Any) -> TensorRef:
    return _tensor(storage, _dtype_name(dtype), offset, size, stride)


def _tensor(storage: Any, dtype: str, offset: int, size: Any, stride: Any) -> TensorRef:
    return TensorRef(
        dtype=dtype,
        shape=tuple(int(item) for item in size),
        storage=storage if isinstance(storage, StorageRef) else None,
        offset=int(offset),
        stride=tuple(int(item) for item in stride),
    )


def _as_parameter(data: Any, *_rest: Any) -> Any:
    if isinstance(data, TensorRef):
        data.parameter = True
    return data


def _from_type_v2(func: Any, _new_type: Any, args: Any, _state: Any) -> Any:
    if isinstance(func, GlobalRef) and isinstance(args, tuple):
        return _call_allowed(func.full_name, args)
    return Opaque(_origin(func), args)


def _meta_tensor(dtype: Any, size: Any, *_rest: Any) -> TensorRef:
    return TensorRef(dtype=_dtype_name(dtype), shape=tuple(int(item) for item in size))


def _device_tensor(data: Any, *_rest: Any) -> Any:
    return data


def _encode(text: Any, encoding: str = "utf-8") -> Any:
    if isinstance(text, str) and encoding in ("latin1", "latin-1", "utf-8", "ascii"):
        return text.encode(encoding)
    return Opaque("_codecs.encode", (text, encoding))


def _bytearray(*args: Any) -> Any:
    # bytearray(n) with a huge n would allocate n bytes; only copies of bytes are built.
    if len(args) == 1 and isinstance(args[0], bytes):
        return bytearray(args[0])
    return Opaque("builtins.bytearray", args)


def _set(*args: Any) -> Any:
    return set(args[0]) if args else set()


def _device(kind: Any, index: Any = None) -> str:
    return f"{kind}:{index}" if index is not None else str(kind)


_CALLS: dict[str, Callable[..., Any]] = {
    "collections.OrderedDict": lambda *args: collections.OrderedDict(*args[:1]),
    "collections.Counter": lambda *args: collections.Counter(*args[:1]),
    "builtins.set": _set,
    "builtins.bytearray": _bytearray,
    "builtins.complex": lambda real=0.0, imag=0.0: complex(float(real), float(imag)),
    "_codecs.encode": _encode,
    "torch.Size": lambda items=(): tuple(items),
    "torch.device": _device,
    "torch.serialization._get_layout": lambda name: f"torch.{name}",
    "torch._utils._rebuild_tensor": lambda storage, offset, size, stride: _rebuild_v2(storage, offset, size, stride),
    "torch._utils._rebuild_tensor_v2": _rebuild_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_v3,
    "torch._utils._rebuild_qtensor": _rebuild_v2,
    "torch._utils._rebuild_parameter": _as_parameter,
    "torch._utils._rebuild_parameter_with_state": _as_parameter,
    "torch._utils._rebuild_meta_tensor_no_storage": _meta_tensor,
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": _device_tensor,
    "torch._utils._rebuild_device_tensor_from_numpy": _device_tensor,
    "torch._tensor._rebuild_from_type_v2": _from_type_v2,
}


def _zip_storage(pid: tuple[Any, ...]) -> StorageRef:
    """Resolve the persistent id of the zip format: ('storage', type, key, location, numel)."""
    if len(pid) < 5:
        raise PickleNotSupportedError(f"storage persistent id has {len(pid)} fields, expected 5")
    _, storage_type, key, location, numel = pid[:5]
    return StorageRef(key=str(key), dtype=_storage_dtype(storage_type), numel=int(numel), location=str(location))


def legacy_storage(pid: tuple[Any, ...]) -> StorageRef:
    """Resolve the persistent id of the legacy format: ('storage', type, root_key, location, numel, view)."""
    if len(pid) < 5:
        raise PickleNotSupportedError(f"storage persistent id has {len(pid)} fields, expected 6")
    _, storage_type, key, location, numel = pid[:5]
    return StorageRef(key=str(key), dtype=_storage_dtype(storage_type), numel=int(numel), location=str(location))


def _storage_dtype(storage_type: Any) -> str:
    name = storage_type.name if isinstance(storage_type, GlobalRef) else ""
    if name in ("UntypedStorage", "TypedStorage"):
        return "uint8"
    if name in STORAGE_DTYPE:
        return STORAGE_DTYPE[name]
    raise PickleNotSupportedError(f"storage type {_origin(storage_type)} is not a torch storage class")


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, GlobalRef) and dtype.module == "torch" and dtype.name in DTYPE_ITEMSIZE:
        return dtype.name
    return "unknown"


def _origin(value: Any) -> str:
    if isinstance(value, GlobalRef):
        return value.full_name
    if isinstance(value, Opaque):
        return value.origin
    return type(value).__name__


def _ascii(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


_OPCODE_NAMES = {ord(op.code): op.name for op in pickletools.opcodes}


def _unsupported_opcode(code: int, position: int, protocol: int) -> str:
    opcode = _OPCODE_NAMES.get(code)
    if opcode is None:
        return f"byte 0x{code:02x} at offset {position} is not a pickle opcode"
    return (
        f"pickle opcode {opcode} at offset {position} (pickle protocol {protocol}) is not "
        "accepted by torch's weights_only loader; re-save the file with torch.save's default "
        "pickle_protocol=2"
    )


def find_tensors(tree: Any) -> dict[str, TensorRef]:
    """Return the tensors of a flat state dict (name -> TensorRef), or {} when ``tree`` is not one."""
    if not isinstance(tree, dict) or not tree:
        return {}
    if all(isinstance(key, str) and isinstance(value, TensorRef) for key, value in tree.items()):
        return dict(tree)
    return {}
