"""Record every ATen op call of a block of code as frozen ``OpCall`` records.

A private ``TorchDispatchMode`` sees each op after autograd, as the backend would; a
``ModuleTracker`` (``modules.py``) says which module issued it. The same recorder serves both modes: predict
mode also opens composite kernels so their constituent ops are recorded under them (on the
emulated device, by running the body on meta copies: ``shadow.py``), live mode adds evidence
around each real call (see ``live.py``).
"""

from __future__ import annotations

import inspect
import itertools
import os
import sys
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from functools import partial
from types import CodeType, FrameType
from typing import Any

import torch
from torch._C import DispatchKey
from torch.utils._python_dispatch import TorchDispatchMode

from fallback_probe.collect import sdpa, shadow
from fallback_probe.collect.modules import module_tracker
from fallback_probe.collect.scalars import call_op
from fallback_probe.records import (
    EMPTY_BODY,
    MATH_FOR_MPS,
    TRANSPOSED,
    UNTRACED,
    OpCall,
    TensorMeta,
)

_TORCH_DIR = os.path.dirname(torch.__file__)
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL_PREFIXES = (_TORCH_DIR, _PKG_DIR, os.path.dirname(os.__file__))

# Composite ops whose body on the CPU is not what MPS runs: never opened, judged by route.
NEVER_DECOMPOSE = frozenset(
    {
        "aten::convolution",
        "aten::_convolution",
        "aten::convolution_backward",
        "aten::_convolution_double_backward",
        "aten::detach",
        "aten::lift_fresh",
        "aten::copy_",
    }
)

# In the dispatcher's order for a backend without a kernel of its own (mps-facts §11): the
# generated wrapper of a structured op outranks the op's own composite kernel (all.dims).
# A CompositeImplicitAutograd op reaches the mode only where autograd is off (inference
# mode); there the backend key runs the same decomposition.
_COMPOSITE_KEYS = (
    DispatchKey.CompositeExplicitAutogradNonFunctional,
    DispatchKey.CompositeExplicitAutograd,
    DispatchKey.CompositeImplicitAutograd,
)


def op_name(func: torch._ops.OpOverload) -> str:
    """PyTorch's own spelling: ``aten::add.Tensor``, ``aten::relu`` (never ``.default``)."""
    return func.name()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _meta(t: torch.Tensor, on_device: bool) -> TensorMeta:
    shape = tuple(t.shape)
    numel = 1
    for s in shape:
        numel *= s
    return TensorMeta(_dtype_name(t.dtype), shape, numel * t.element_size(), on_device)


_PLAIN = (torch.Tensor, torch.nn.Parameter)
_IGNORED_NAMESPACES = ("profiler::",)


def _plain(args: tuple) -> bool:
    """A composite's body may only run for real on ordinary tensors: run on a tensor subclass
    (the emulated device) it would compute device arguments from the backing device."""
    for a in args:
        if isinstance(a, torch.Tensor) and type(a) not in _PLAIN:
            return False
        if isinstance(a, (list, tuple)) and not _plain(tuple(a)):
            return False
    return True


def _returns_view(func: Any) -> bool:
    """Every result aliases an input without writing it (``Tensor(a) self -> Tensor(a)``)."""
    returns = func._schema.returns
    return bool(returns) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in returns
    )


def _written(func: Any, args: tuple, kwargs: dict) -> list[Any]:
    """The arguments an op writes into (``Tensor(a!)``): its results when it returns none."""
    out = []
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            out.append(kwargs[a.name] if a.name in kwargs else args[i] if i < len(args) else None)
    return out


def _makes_on_device(kwargs: dict) -> bool:
    """A ``device="mps"`` argument: a factory or a transfer onto the (emulated) device."""
    device = kwargs.get("device")
    return device is not None and getattr(device, "type", None) == "mps"


_DYNAMO = "torch._dynamo"
_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR

# Convolutions route to another MPS kernel when transposed (classify/routes.py): keep the flag.
_TRANSPOSED_ARG = {
    "aten::convolution": 6,
    "aten::_convolution": 6,
    "aten::convolution_backward": 7,
}


def _dispatch_unwrapped(mode: Recorder, func, types, args, kwargs):  # type: ignore[no-untyped-def]
    return mode._dispatch(func, types, args, kwargs)


# What torch itself wraps __torch_dispatch__ in (torch >= 2.1), used once dynamo is loaded.
_disable_dynamo = getattr(torch, "_disable_dynamo", None)
_without_dynamo = (
    _disable_dynamo(_dispatch_unwrapped, recursive=True) if _disable_dynamo is not None else None
)


_get_frame_hook = getattr(
    getattr(getattr(torch._C, "_dynamo", None), "eval_frame", None), "get_eval_frame_callback", None
)
_dynamo_told = False  # dynamo was told never to trace __torch_dispatch__


def _dynamo_frame_hook() -> bool:
    """Whether dynamo's frame-evaluation hook is set (a compiled function is running). The
    disable wrapper only swaps that hook out and back: with none set it changes nothing and
    costs ~1 us per op. A torch that does not say is treated as set."""
    return _get_frame_hook is None or _get_frame_hook() is not None


def _skip_dispatch_frames() -> None:
    """Tell dynamo never to trace ``__torch_dispatch__`` itself, as torch's own wrapper would
    (see ``_should_skip_dynamo``): done once dynamo is imported, before a compiled function
    can run into it (importing dynamo sets no frame hook; calling a compiled function does)."""
    global _dynamo_told
    _dynamo_told = True
    try:
        from torch._dynamo.eval_frame import skip_code

        skip_code(_DISPATCH_CODE)
    except (ImportError, AttributeError):  # another torch: the disable wrapper still applies
        pass


def _display_path(filename: str, cwd: str | None) -> str:
    if filename.startswith("<") or cwd is None:
        return filename
    try:
        rel = os.path.relpath(filename, cwd)
    except ValueError:  # another drive on Windows
        return filename
    return filename if rel.startswith("..") else rel


_Facts = tuple[str, bool, "int | None", "DispatchKey | None", bool]
_NO_BODY = "the installed torch runs it as a kernel of its own, so what it calls is unknown"

# What the hot path files per call; OpCall (a frozen dataclass, ~2 us to build) is made only
# when the trace is read: (index, op, parent, module, backward, code, line, inputs, outputs,
# extra).
_Row = tuple[
    int, str, "int | None", str, bool, "CodeType | None", int,
    tuple[TensorMeta, ...], tuple[TensorMeta, ...], "dict[str, Any] | None",
]  # fmt: skip


class Recorder(TorchDispatchMode):
    """The dispatch mode behind every collector; not public: use ``fallback_probe.probe()``.

    ``handler`` is the emulated device's ``__torch_dispatch__``: an op on its tensors is handed
    to it directly instead of going back through the dispatcher (one Python layer per op).
    ``refused`` then says whether a Mac would have raised on that op (the error is filed on
    its record, and the classifier judges it unsupported).
    ``open_views=False`` judges composite view ops (``t``, ``transpose``, ``expand``) whole:
    their bodies only reach other views and ``as_strided``, so when those are native in every
    judged release, opening them would cost two dispatch levels and tell nothing.
    """

    def __init__(
        self,
        *,
        is_on_device: Callable[[torch.Tensor], bool] | None = None,
        decompose: bool | Collection[str] = False,
        handler: Callable[..., Any] | None = None,
        refused: Callable[[], str | None] | None = None,
        open_views: bool = True,
    ) -> None:
        super().__init__()
        self._open_views = open_views
        self.cpu_work: dict[str, int] = {}
        self._is_on_device = is_on_device
        self._decompose = decompose
        self._handler = handler
        self._refused = refused  # the error a Mac prints for the op just handled, if any
        self._stack: list[tuple[int, str]] = []  # open composite calls: (index, op)
        self._tracker = module_tracker()
        self._internal_code: dict[int, tuple[CodeType, bool]] = {}
        # The last torch frame that called an op, and the user's frame above it (see _source).
        # Holding one frame keeps its locals until the next op or the end of the probe.
        self._last_caller: FrameType | None = None
        self._last_source: tuple[CodeType | None, int] = (None, 0)
        self._ops: dict[Any, _Facts] = {}
        self.sink: Callable[[OpCall], None] | None = None
        self._counter = itertools.count()
        self._depth = 0  # the mode is re-entered while a composite runs; the tracker is not
        self._rows: list[_Row] = []  # filed, not yet made into OpCalls
        self._calls: list[OpCall] = []
        # Sources are shown relative to where the run started (one getcwd, not one per op).
        try:
            self._cwd: str | None = os.getcwd()
        except OSError:  # the working directory was removed: show absolute paths
            self._cwd = None
        self._paths: dict[str, str] = {}
        self._tensor_metas: dict[tuple[torch.dtype, torch.Size, bool], TensorMeta] = {}
        self._parents: set[int] = set()  # opened composites that called something
        # While a body runs on meta copies (shadow.py): its calls, filed relative to it.
        self._pending: list[_Row] | None = None
        self._bodies = _bodies_for(decompose, open_views)

    # -- context -------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        if _DYNAMO in sys.modules and not _dynamo_told:
            _skip_dispatch_frames()
        if self._depth == 0:
            # Entered once: a second __enter__ would register a second pair of global module
            # hooks and orphan the first, which then fire on every module call for good.
            self._tracker.__enter__()
        self._depth += 1
        try:
            super().__enter__()
        except BaseException:
            self._leave_tracker()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._leave_tracker(*exc)

    def _leave_tracker(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._last_caller = None
            self._tracker.__exit__(*exc)

    # -- the records ---------------------------------------------------------------------
    @property
    def calls(self) -> list[OpCall]:
        """Every call filed so far, in the order they finished (a composite after its ops)."""
        if self._rows:
            self._calls.extend(map(self._build, self._rows))
            self._rows.clear()
        return self._calls

    @calls.setter
    def calls(self, calls: list[OpCall]) -> None:
        self._rows.clear()
        self._calls = list(calls)

    def trace(self) -> list[OpCall]:
        """The records in call order (a composite before the ops it ran)."""
        return sorted(self.calls, key=lambda c: c.index)

    def _build(self, row: _Row) -> OpCall:
        index, name, parent, module, backward, code, line, inputs, outputs, extra = row
        source = f"{self._path(code.co_filename)}:{line}" if code is not None else ""
        return OpCall(
            index=index,
            op=name,
            parent=parent,
            module=module,
            backward=backward,
            source=source,
            inputs=inputs,
            outputs=outputs,
            **(extra or {}),
        )

    # -- helpers -------------------------------------------------------------------------
    def _source(self) -> tuple[CodeType | None, int]:
        """The innermost frame of the user's code: (code, line)."""
        frame = sys._getframe(2)
        # The frame that called the op sits just above the innermost __torch_dispatch__.
        for _ in range(4):
            if frame is None or frame.f_code is _DISPATCH_CODE:
                break
            frame = frame.f_back
        else:
            frame = None
        caller = frame.f_back if frame is not None else sys._getframe(2)
        if caller is None:
            return None, 0
        if not self._internal(caller.f_code):
            return caller.f_code, caller.f_lineno
        # A torch function issuing several ops (an optimizer loop, a module's forward, the
        # autograd engine) is one live frame: its callers sit still while it runs, so the
        # user's frame found above it is the same until another frame calls an op.
        if caller is self._last_caller:
            return self._last_source
        # A generator's frame can be resumed from elsewhere between two of its ops: no cache.
        cacheable = not caller.f_code.co_flags & _SUSPENDABLE
        frame = caller.f_back
        found: tuple[CodeType | None, int] = (None, 0)
        while frame is not None:
            if not self._internal(frame.f_code):
                found = (frame.f_code, frame.f_lineno)
                break
            frame = frame.f_back
        if cacheable:
            self._last_caller, self._last_source = caller, found
        return found

    def _internal(self, code: CodeType) -> bool:
        # Keyed by id: hashing a code object hashes its bytecode, constants and names. The
        # entry holds the code object, so its id cannot be reused while the entry exists.
        entry = self._internal_code.get(id(code))
        if entry is not None and entry[0] is code:
            return entry[1]
        fn = code.co_filename
        internal = fn.startswith(_INTERNAL_PREFIXES) or fn.startswith("<frozen")
        self._internal_code[id(code)] = (code, internal)
        return internal

    def _path(self, filename: str) -> str:
        path = self._paths.get(filename)
        if path is None:
            path = self._paths[filename] = _display_path(filename, self._cwd)
        return path

    def _metas(self, values: Any) -> tuple[tuple[TensorMeta, ...], bool]:
        """Records of the tensors among ``values`` (and inside list arguments), and whether
        any is on the device. One shared record per dtype, shape and device flag."""
        out: list[TensorMeta] = []
        any_dev = False
        is_dev = self._is_on_device
        known = self._tensor_metas
        for v in values:
            if isinstance(v, torch.Tensor):
                items: Any = (v,)
            elif type(v) is list or type(v) is tuple:
                items = v
            else:
                continue
            for t in items:
                if not isinstance(t, torch.Tensor):
                    continue
                dev = True if is_dev is None else is_dev(t)
                any_dev = any_dev or dev
                try:
                    key = (t.dtype, t.shape, dev)
                    found = known.get(key)
                except TypeError:  # symbolic sizes are not hashable
                    out.append(_meta(t, dev))
                    continue
                if found is None:
                    found = known[key] = _meta(t, dev)
                out.append(found)
        return tuple(out), any_dev

    def _facts(self, func: Any) -> _Facts:
        """Per overload, once: (name, ignored, index of a transposed flag, the composite
        kernel to open it with, if it may be opened, and whether it should be opened)."""
        name = op_name(func)
        wanted = self._decompose is True or (
            bool(self._decompose) and name in self._decompose  # type: ignore[operator]
        )
        wanted = (
            wanted and name not in NEVER_DECOMPOSE and (self._open_views or not _returns_view(func))
        )
        key = None
        if wanted:
            has = torch._C._dispatch_has_kernel_for_dispatch_key
            key = next((k for k in _COMPOSITE_KEYS if has(name, k)), None)
        facts = (name, name.startswith(_IGNORED_NAMESPACES), _TRANSPOSED_ARG.get(name), key, wanted)
        self._ops[func] = facts
        return facts

    # -- the hook ------------------------------------------------------------------------
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a dispatch mode's __torch_dispatch__ in torch._disable_dynamo, whose
        # first call imports torch._dynamo: seconds per process, for a probe that may never
        # meet torch.compile. Dynamo compiles nothing before it is imported, so the same
        # wrapper is applied below only once it is (see __torch_dispatch__).
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if _DYNAMO in sys.modules and _without_dynamo is not None:
            if not _dynamo_told:
                _skip_dispatch_frames()
            if not _dynamo_frame_hook():
                return self._dispatch(func, types, args, kwargs)
            # What torch._disable_dynamo's wrapper calls after its first call (it stores the
            # torch._dynamo.disable'd function there); called directly, one frame less per op.
            disabled = _dispatch_unwrapped.__dict__.get("__dynamo_disable")
            if disabled is not None:
                return disabled(self, func, types, args, kwargs)
            return _without_dynamo(self, func, types, args, kwargs)
        return self._dispatch(func, types, args, kwargs)

    def _dispatch(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        facts = self._ops.get(func) or self._facts(func)
        name, ignored, flag, composite_key, wanted = facts
        if ignored:  # bookkeeping, not computation: on purpose
            return func(*args, **kwargs)
        inputs, in_dev = self._metas(args)
        if kwargs:
            kw_inputs, kw_dev = self._metas(kwargs.values())
            inputs += kw_inputs
            in_dev = in_dev or kw_dev
        index = next(self._counter)
        stack = self._stack
        parent = stack[-1][0] if stack else None
        if parent is not None:
            self._parents.add(parent)
        extra: dict[str, Any] | None = None
        on_device = self._handler is not None and (in_dev or _makes_on_device(kwargs))
        opened = composite_key is not None and all(op != name for _, op in stack)
        body: tuple[_Row, ...] = ()
        if opened and on_device:
            result, extra, body = self._shadowed(func, composite_key, name, types, args, kwargs)
        elif opened and _plain(args):
            stack.append((index, name))
            try:
                with self:
                    result = func._op_dk(composite_key, *args, **kwargs)
            finally:
                stack.pop()
            if index in self._parents:
                self._parents.discard(index)
            else:
                extra = {"notes": (EMPTY_BODY,)}
        elif name in _ATTENTION and (on_device or (in_dev and self._pending is None)):
            result, extra, body = self._attention(func, name, types, args, kwargs)
        elif on_device:
            result = self._handler(func, types, args, kwargs)
        elif self._pending is not None:
            result = shadow.run_leaf(func, args, kwargs)
        else:
            result, extra = self.run(func, name, args, kwargs)
        if on_device and self._refused is not None:
            error = self._refused()  # a Mac raises here: filed on this call
            if error is not None:
                extra = {**(extra or {}), "error": error}
        if wanted and not (opened and (on_device or _plain(args))):
            # A composite in a judged release whose body this torch cannot show (it has a
            # kernel of its own here, or the call is on another tensor subclass).
            extra = dict(extra or {})
            extra["notes"] = (*extra.get("notes", ()), f"{UNTRACED}: {_NO_BODY}")
        if flag is not None and len(args) > flag and args[flag] is True:
            extra = dict(extra or {})
            extra["notes"] = (*extra.get("notes", ()), TRANSPOSED)
        outputs, out_dev = self._metas(result if isinstance(result, (list, tuple)) else (result,))
        if result is None:  # returns nothing: it wrote into arguments (``_cummax_helper``)
            outputs, out_dev = self._metas(_written(func, args, kwargs))
        if self._is_on_device is not None and not (in_dev or out_dev) and parent is None:
            self.cpu_work[name] = self.cpu_work.get(name, 0) + 1
            return result
        self._file(index, name, parent, inputs, outputs, extra)
        if body:
            self._file_body(index, body)
        return result

    # -- composites on the emulated device ----------------------------------------------
    def _shadowed(
        self, func: Any, key: DispatchKey, name: str, types: Any, args: tuple, kwargs: dict
    ) -> tuple[Any, dict[str, Any] | None, tuple[_Row, ...]]:
        """The real result from the emulation; what the body calls from its run on meta
        copies (taken before the real call, which may change its arguments)."""
        sig = shadow.signature(func, args, kwargs)
        body = self._bodies.get(sig) if sig is not None else None
        margs = mkwargs = None
        if body is None:
            margs, mkwargs = shadow.to_meta(args, kwargs)
        result = self._handler(func, types, args, kwargs)  # type: ignore[misc]
        if body is None:
            body = self._trace_body(name, partial(_open, func, key, margs, mkwargs))
            if sig is not None:
                if len(self._bodies) >= _MAX_BODIES:
                    self._bodies.clear()
                self._bodies[sig] = body
        rows, failure = body
        if failure is not None:
            return result, {"notes": (f"{UNTRACED}: {failure}",)}, rows
        return result, None if rows else {"notes": (EMPTY_BODY,)}, rows

    def _attention(
        self, func: Any, name: str, types: Any, args: tuple, kwargs: dict
    ) -> tuple[Any, dict[str, Any] | None, tuple[_Row, ...]]:
        """The CPU's flash attention: the real result from the emulation; as children, what
        MPS's portable math runs instead (collect/sdpa.py)."""
        eligible = name == sdpa.FORWARD and sdpa.math_for_mps_eligible(args, kwargs)
        sig = shadow.signature(func, args, kwargs)
        sig = None if sig is None else (*sig, eligible)
        body = self._bodies.get(sig) if sig is not None else None
        run = None
        if body is None:
            run = sdpa.body(name, *shadow.to_meta(args, kwargs))
        if self._handler is not None:
            result = self._handler(func, types, args, kwargs)
        else:  # not emulated: the script's tensors stand for the device's
            result = self.run(func, name, args, kwargs)[0]
        if body is None:
            body = self._trace_body(name, run)  # type: ignore[arg-type]
            if sig is not None:
                self._bodies[sig] = body
        rows, failure = body
        notes = (MATH_FOR_MPS,) if eligible else ()
        if failure is not None:
            notes = (*notes, f"{UNTRACED}: {failure}")
        return result, {"notes": notes} if notes else None, rows

    def _trace_body(
        self, name: str, run: Callable[[Recorder], object]
    ) -> tuple[tuple[_Row, ...], str | None]:
        """Run a body on meta tensors (``run`` enters the recorder around what is recorded),
        every call in it on the device; its rows are indexed from 1, the call being 0."""
        saved = (self._stack, self._counter, self._is_on_device, self._handler, self._pending)
        saved_parents = self._parents
        pending: list[_Row] = []
        self._stack = [(0, name)]
        self._counter = itertools.count(1)
        self._parents = set()  # indices here are the body's own
        self._is_on_device = _on_device
        self._handler = None
        self._pending = pending
        failure = None
        try:
            run(self)
        except Exception as err:  # what the body calls stays unknown: said on the call
            failure = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            pending = []
        finally:
            self._stack, self._counter, self._is_on_device, self._handler, self._pending = saved
            self._parents = saved_parents
        return tuple(sorted(pending, key=lambda r: r[0])), failure

    def _file_body(self, index: int, rows: tuple[_Row, ...]) -> None:
        """File a body's rows under the call ``index``: fresh indices, the call's module and
        source (the body runs where the call was made)."""
        if not rows:
            return
        module, backward = self._tracker.where()
        code, line = self._source()
        fresh = {0: index}
        for rel, name, parent, _, _, _, _, inputs, outputs, extra in rows:
            fresh[rel] = new = next(self._counter)
            row = (new, name, fresh[parent], module, backward, code, line, inputs, outputs, extra)
            self._file_row(row)

    def _file(
        self,
        index: int,
        name: str,
        parent: int | None,
        inputs: tuple[TensorMeta, ...],
        outputs: tuple[TensorMeta, ...],
        extra: dict[str, Any] | None,
    ) -> None:
        # Calls are filed as they finish (a composite after its children); ``trace`` sorts.
        if self._pending is not None:  # a body on meta: where it runs is the call's
            self._pending.append((index, name, parent, "", False, None, 0, inputs, outputs, extra))
            return
        module, backward = self._tracker.where()
        code, line = self._source()
        self._file_row((index, name, parent, module, backward, code, line, inputs, outputs, extra))

    def _file_row(self, row: _Row) -> None:
        if self.sink is None:
            self._rows.append(row)
            return
        call = self._build(row)
        self.calls.append(call)
        self.sink(call)

    def run(self, func, name: str, args: tuple, kwargs: dict) -> tuple[Any, dict[str, Any] | None]:
        """Run one op for real; live collectors override this to gather evidence."""
        return call_op(func, args, kwargs), None

    # -- composite ops that decompose above the dispatch mode ---------------------------
    @contextmanager
    def composite(self, name: str, args: tuple, kwargs: dict) -> Iterator[list[Any]]:
        """Record ``name`` as a parent of whatever runs inside (see ``intercept.py``); the
        caller appends the composite's result to the list it gets, so its outputs count."""
        inputs, _ = self._metas(args)
        if kwargs:
            inputs += self._metas(kwargs.values())[0]
        index = next(self._counter)
        parent = self._stack[-1][0] if self._stack else None
        self._stack.append((index, name))
        results: list[Any] = []
        try:
            yield results
        finally:
            self._stack.pop()
            self._parents.discard(index)
        result = results[0] if results else None
        outputs = self._metas(result if isinstance(result, (list, tuple)) else (result,))[0]
        self._file(index, name, parent, inputs, outputs, None)


_ATTENTION = frozenset({sdpa.FORWARD, sdpa.BACKWARD})


def _open(func: Any, key: DispatchKey, args: tuple, kwargs: dict, recorder: Recorder) -> None:
    """A composite's own body, recorded."""
    with recorder:
        func._op_dk(key, *args, **kwargs)


_Body = tuple[tuple[_Row, ...], "str | None"]
_MAX_BODIES = 4096  # signatures kept per kind of recorder (a few MB at most)
_BODIES: dict[tuple[Any, bool], dict[tuple, _Body]] = {}


def _bodies_for(decompose: bool | Collection[str], open_views: bool) -> dict[tuple, _Body]:
    """What bodies on meta called, shared by every recorder that opens the same composites:
    the plugin's probe per test, a benchmark's rounds. Only metadata decides a body on meta
    (shadow.py), so a signature seen once is known for the rest of the process."""
    key = (decompose if isinstance(decompose, (bool, frozenset)) else None, open_views)
    if key[0] is None:  # another collection: not worth a shared entry
        return {}
    return _BODIES.setdefault(key, {})


def _on_device(t: torch.Tensor) -> bool:
    """Inside a body run on meta copies every tensor stands for one on the device."""
    return True


_DISPATCH_CODE = Recorder.__torch_dispatch__.__code__
