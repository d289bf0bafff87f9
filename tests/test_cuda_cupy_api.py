"""The CUDA target's CuPy calls checked against CuPy's own signatures, without a GPU (issue 17,
item 5; the cuBLAS side: tests/test_cuda_cublas_api.py).

* **CuPy** (``cupy-cuda13x``, in the ``test`` extra: it imports without a GPU): the CuPy stand-in of
  tests/test_cuda_streams.py accepts only what real CuPy accepts, meaning the same (its parameters'
  names, kinds, positions and defaults against CuPy's signatures: ``inspect.signature``, or the
  signature Cython embeds in the docstring); every call bngraph makes through it in a training step,
  a captured graph and forward binds to CuPy's signature, with the types Cython checks (``tuple
  options``, ``str code``, ``tuple grid``); a kernel launch's keywords, which ``RawKernel.__call__``
  passes on to ``cupy.cuda.Function.__call__`` (no signature to read), are asked of that parser
  itself. Every ``cp.`` name runtime.py uses exists in CuPy.

Each check is shown to fail on a planted mismatch. Without CuPy the tests are skipped, except in
CI (``CI`` set), where they fail: ``pip install -e '.[test]'`` brings it.
"""
from __future__ import annotations

import ast
import functools
import inspect
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.backends.cuda_target import runtime as cuda_runtime
from test_cuda_cublas_api import need

RUNTIME = Path(cuda_runtime.__file__)
P = inspect.Parameter
UNKNOWN = type("Unknown", (), {"__repr__": lambda self: "<a default no signature shows>"})()


@functools.lru_cache(maxsize=None)
def _import_cupy():
    try:
        import cupy
        import cupy.cuda.function
        import cupy.cuda.graph  # noqa: F401
    except ImportError:
        return None
    return cupy


def real_cupy():
    """The real CuPy module (imported once, before any test puts a stand-in in sys.modules)."""
    return need(_import_cupy(), "CuPy (cupy-cuda13x)")


def _split(params: str) -> list:
    out, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "([{" and 1 or ch in ")]}" and -1 or 0
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [p for p in out + [cur.strip()] if p]


def signature_of(obj) -> inspect.Signature:
    """``inspect.signature``, else the signature Cython embeds as the docstring's first line
    (``RawModule(str code=None, *, tuple options=(), ...)``: the C type becomes the annotation)."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        pass
    line = (obj.__doc__ or "").strip().splitlines()[0]
    m = re.fullmatch(r"[\w.]+\((.*)\)(?:\s*->.*)?", line)
    assert m, f"{obj!r}: no signature in its docstring ({line!r})"
    params, kind = [], P.POSITIONAL_OR_KEYWORD
    for part in _split(m.group(1)):
        if part == "*":
            kind = P.KEYWORD_ONLY
        elif part.startswith("**"):
            params.append(P(part[2:], P.VAR_KEYWORD))
        elif part.startswith("*"):
            params.append(P(part[1:], P.VAR_POSITIONAL))
            kind = P.KEYWORD_ONLY
        else:
            decl, eq, default = part.partition("=")
            *ctype, name = decl.split()
            value = P.empty
            if eq:
                try:
                    value = ast.literal_eval(default.strip())
                except ValueError:  # a name (float, ...): there, but not comparable
                    value = UNKNOWN
            params.append(P(name, kind, default=value, annotation=ctype[0] if ctype else P.empty))
    return inspect.Signature(params)


def function_call_refuses(cp, *args, **kwargs):
    """What ``cupy.cuda.function.Function.__call__`` (the launch RawKernel's keywords go to) says of
    these arguments: its parser's TypeError, or None when it takes them (the launch then fails for
    want of a GPU, after parsing)."""
    Function = cp.cuda.function.Function
    try:
        Function.__new__(Function)(*args, **kwargs)
    except TypeError as e:
        return str(e)
    except Exception:  # noqa: BLE001 (parsed, then no device)
        return None
    return None


def kernel_call_signature(cp, keywords) -> inspect.Signature:
    """A launch through ``RawModule.get_function(name)``: RawKernel.__call__'s positional
    (grid, block, args), typed as Function.__call__ checks them, and the ``keywords`` Function takes."""
    own = [p for p in signature_of(cp.RawKernel.__call__).parameters.values() if p.kind == P.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in own] == ["self", "grid", "block", "args"]
    typed = {"grid": "tuple" if "expected tuple" in (function_call_refuses(cp, [1], (1,), ()) or "") else P.empty,
             "block": "tuple" if "expected tuple" in (function_call_refuses(cp, (1,), [1], ()) or "") else P.empty}
    params = [P(p.name, p.kind, annotation=typed.get(p.name, P.empty)) for p in own]
    takes = [k for k in sorted(keywords)  # a wrong value's TypeError still means the keyword exists
             if "unexpected keyword" not in (function_call_refuses(cp, (1,), (1,), (), **{k: None}) or "")]
    return inspect.Signature(params + [P(k, P.KEYWORD_ONLY, default=UNKNOWN) for k in takes])


def real_entries(cp, kernel_keywords=()):
    """The CuPy API bngraph's CUDA runtime uses: name -> (CuPy's signature, is a method)."""
    methods = {"RawModule.get_function": cp.RawModule.get_function, "Graph.launch": cp.cuda.graph.Graph.launch,
               "ndarray.get": cp.ndarray.get, "ndarray.set": cp.ndarray.set, "Device.use": cp.cuda.Device.use,
               **{f"Stream.{m}": getattr(cp.cuda.Stream, m) for m in
                  ("use", "synchronize", "begin_capture", "end_capture", "__enter__", "__exit__")}}
    plain = {"cupy.RawModule": cp.RawModule, "cupy.cuda.Stream": cp.cuda.Stream, "cupy.asarray": cp.asarray,
             "cupy.empty": cp.empty, "cupy.zeros": cp.zeros, "cupy.cuda.Device": cp.cuda.Device,
             "cupy.cuda.runtime.getDeviceCount": cp.cuda.runtime.getDeviceCount}
    out = {k: (signature_of(v), True) for k, v in methods.items()}
    out.update({k: (signature_of(v), False) for k, v in plain.items()})
    out["RawKernel.__call__"] = (kernel_call_signature(cp, kernel_keywords), True)
    return out


def _params(sig, method):
    ps = list(sig.parameters.values())
    return ps[1:] if method else ps


def signature_mismatches(name, stand_in, real, method) -> list:
    """Where the stand-in accepts a call that CuPy refuses or reads differently: each of its
    parameters must be CuPy's, by name, kind (positional at the same place, or keyword), and
    default; CuPy's required parameters are the stand-in's; no ``*args``/``**kwargs`` CuPy lacks."""
    mine, theirs = _params(stand_in, method), _params(real, method)
    by_name = {p.name: p for p in theirs}
    positional = [p.name for p in theirs if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    out = []
    for i, p in enumerate(mine):
        if p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            if not any(q.kind == p.kind for q in theirs):
                out.append(f"{name}: the stand-in takes {'*' if p.kind == P.VAR_POSITIONAL else '**'}{p.name}, "
                           f"CuPy does not")
            continue
        q = by_name.get(p.name)
        if q is None:
            out.append(f"{name}: CuPy has no parameter {p.name!r}")
        elif p.kind == P.POSITIONAL_OR_KEYWORD and (i >= len(positional) or positional[i] != p.name):
            out.append(f"{name}: {p.name!r} is positional {i} in the stand-in, "
                       f"{'keyword-only' if q.kind == P.KEYWORD_ONLY else 'elsewhere'} in CuPy")
        elif p.default is not P.empty and q.default is P.empty:
            out.append(f"{name}: {p.name!r} is optional in the stand-in, required in CuPy")
        elif p.default is not P.empty and q.default is not UNKNOWN and p.default != q.default:
            out.append(f"{name}: {p.name!r} defaults to {p.default!r} in the stand-in, {q.default!r} in CuPy")
    names = {p.name for p in mine}
    for q in theirs:
        if q.default is P.empty and q.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD) and q.name not in names:
            out.append(f"{name}: CuPy requires {q.name!r}, the stand-in does not take it")
    return out


def call_mismatches(name, real, method, args, kwargs) -> list:
    """A recorded call against CuPy's signature, with the C types Cython checks (str, tuple)."""
    try:
        bound = real.bind(*((None,) if method else ()), *args, **kwargs)
    except TypeError as e:
        return [f"{name}: {e}"]
    out = []
    for k, v in bound.arguments.items():
        ann = real.parameters[k].annotation
        want = {"str": str, "tuple": tuple}.get(ann) if isinstance(ann, str) else None
        if want is not None and v is not None and not isinstance(v, want):
            out.append(f"{name}: {k} is a {type(v).__name__}, CuPy takes a {ann}")
    return out


def stand_in_entries(mod) -> dict:
    """The stand-in's side of :func:`real_entries`: name -> (owner, attribute) of each callable."""
    import test_cuda_streams as ts

    kernel = type(mod.RawModule(code="").get_function("k"))
    out = {"cupy.RawModule": (mod, "RawModule"), "RawModule.get_function": (mod.RawModule, "get_function"),
           "RawKernel.__call__": (kernel, "__call__"), "cupy.cuda.Stream": (mod.cuda, "Stream"),
           "Graph.launch": (ts.Graph, "launch"), "ndarray.get": (ts.FakeArray, "get"),
           "ndarray.set": (ts.FakeArray, "set"), "cupy.asarray": (mod, "asarray"), "cupy.empty": (mod, "empty"),
           "cupy.zeros": (mod, "zeros"), "cupy.cuda.Device": (mod.cuda, "Device"),
           "Device.use": (mod.cuda.Device, "use"),
           "cupy.cuda.runtime.getDeviceCount": (mod.cuda.runtime, "getDeviceCount")}
    out.update({f"Stream.{m}": (ts.Stream, m) for m in
                ("use", "synchronize", "begin_capture", "end_capture", "__enter__", "__exit__")})
    return out


@pytest.fixture
def recorded(monkeypatch):
    """tests/test_cuda_streams.py's CuPy stand-in, every entry point logging (name, args, kwargs)."""
    from test_cuda_streams import FakeBlas, FakeCupy

    cp = real_cupy()
    fake = FakeCupy()
    mod = fake.module()
    log, entries = [], stand_in_entries(mod)
    real_kinds = {k: m for k, (_, m) in real_entries(cp).items()}

    def recording(name, fn, method):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            log.append((name, args[1:] if method else args, kwargs))
            return fn(*args, **kwargs)
        return call

    for name, (owner, attr) in entries.items():
        monkeypatch.setattr(owner, attr, recording(name, getattr(owner, attr), real_kinds[name]))
    monkeypatch.setitem(sys.modules, "cupy", mod)
    monkeypatch.setattr(cuda_runtime, "Cublas", FakeBlas)
    monkeypatch.setattr(cuda_runtime, "_MODULES", {})
    return types.SimpleNamespace(log=log, mod=mod, entries=entries, cp=cp)


def test_the_cupy_stand_in_takes_only_what_cupy_takes(recorded):
    real = real_entries(recorded.cp, kernel_keywords={"stream", "shared_mem"})
    assert set(recorded.entries) == set(real)
    problems = []
    for name, (owner, attr) in recorded.entries.items():
        sig, method = real[name]
        problems += signature_mismatches(name, inspect.signature(getattr(owner, attr)), sig, method)
    assert problems == []


def _old(*params):
    """A stand-in signature as test_cuda_streams.py had it before this check."""
    return inspect.Signature([P(p[0], p[1], **({"default": p[2]} if len(p) > 2 else {})) if isinstance(p, tuple)
                              else P(p, P.POSITIONAL_OR_KEYWORD) for p in params])


@pytest.mark.parametrize("name, stand_in, says", [
    ("cupy.RawModule", _old("code", ("options", P.POSITIONAL_OR_KEYWORD, ())),
     "'options' is positional 1 in the stand-in, keyword-only in CuPy"),
    ("cupy.cuda.Stream", _old(("non_blocking", P.POSITIONAL_OR_KEYWORD, False)),
     "'non_blocking' is positional 0 in the stand-in, elsewhere in CuPy"),
    ("RawKernel.__call__", _old("self", "grid", "block", "args", ("shared_mem", P.POSITIONAL_OR_KEYWORD, 0)),
     "'shared_mem' is positional 3 in the stand-in, keyword-only in CuPy"),
    ("cupy.empty", _old(("args", P.VAR_POSITIONAL), ("kwargs", P.VAR_KEYWORD)),
     "the stand-in takes *args, CuPy does not"),
    ("cupy.cuda.Device", _old("i"), "CuPy has no parameter 'i'"),
    ("ndarray.set", _old("self", "host", ("stream", P.POSITIONAL_OR_KEYWORD, None)),
     "CuPy has no parameter 'host'"),
    ("ndarray.get", _old("self", ("stream", P.POSITIONAL_OR_KEYWORD, 0)),
     "'stream' defaults to 0 in the stand-in, None in CuPy"),
    ("cupy.zeros", _old(("dtype", P.KEYWORD_ONLY, float)), "CuPy requires 'shape', the stand-in does not"),
], ids=["keyword-only", "position", "launch-keyword", "varargs", "name", "renamed", "default", "required"])
def test_a_planted_stand_in_drift_is_caught(name, stand_in, says):
    real = real_entries(real_cupy(), kernel_keywords={"stream", "shared_mem"})
    sig, method = real[name]
    found = signature_mismatches(name, stand_in, sig, method)
    assert found and says in found[0], found


def _workload():
    X = np.random.default_rng(0).standard_normal((8, 4))
    y = np.arange(8) % 3
    model = bg.compile(bg.mlp([4, 5, 3]), target="cuda", cuda_graph=True)
    for _ in range(3):  # eager, captured, replayed
        model.train_step(X, y, bg.optim.Adam(lr=1e-3) if _ == 0 else None)
    model.forward(X)
    model.evaluate(X, y)
    return model


def test_every_cupy_call_bngraph_makes_binds_to_cupys_signature(recorded):
    _workload()
    keywords = {k for n, _, kw in recorded.log if n == "RawKernel.__call__" for k in kw}
    real = real_entries(recorded.cp, kernel_keywords=keywords)
    called = {n for n, *_ in recorded.log}
    assert {"cupy.RawModule", "RawModule.get_function", "RawKernel.__call__", "cupy.cuda.Stream",
            "Stream.begin_capture", "Stream.end_capture", "Graph.launch", "ndarray.set", "ndarray.get"} <= called
    assert "stream" in keywords  # launches name the model's stream: a keyword CuPy's launch must take
    problems = [p for n, args, kwargs in recorded.log for p in call_mismatches(n, *real[n], args, kwargs)]
    assert problems == []


@pytest.mark.parametrize("name, args, kwargs, says", [
    ("cupy.RawModule", (), {"code": "", "options": list(cuda_runtime.NVRTC_OPTIONS)}, "options is a list"),
    ("cupy.RawModule", ("", cuda_runtime.NVRTC_OPTIONS), {}, "too many positional arguments"),
    ("RawKernel.__call__", ([1], (256,), ()), {"stream": None}, "grid is a list, CuPy takes a tuple"),
    ("RawKernel.__call__", ((1,), (256,), ()), {"stream_": None}, "unexpected keyword argument 'stream_'"),
    ("cupy.cuda.Stream", (), {"nonblocking": True}, "unexpected keyword argument 'nonblocking'"),
    ("ndarray.get", (), {"stream": None, "sync": False}, "unexpected keyword argument 'sync'"),
], ids=["options-list", "positional-options", "grid-list", "launch-keyword", "stream-keyword", "get-keyword"])
def test_a_planted_wrong_call_is_caught(name, args, kwargs, says):
    real = real_entries(real_cupy(), kernel_keywords={"stream", *kwargs})
    found = call_mismatches(name, *real[name], args, kwargs)
    assert found and says in found[0], found


def cupy_names(source: str) -> set:
    """The dotted names ``source`` reaches from the CuPy module (``cp.X.Y``, ``self.cp.X``)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        chain, n = [], node
        while isinstance(n, ast.Attribute):
            chain.insert(0, n.attr)
            n = n.value
        if chain and isinstance(n, ast.Name) and n.id == "cp":
            out.add(".".join(chain))
        elif len(chain) > 1 and chain[0] == "cp" and isinstance(n, ast.Name) and n.id == "self":
            out.add(".".join(chain[1:]))
    return {a for a in out if not any(b.startswith(a + ".") for b in out)}  # the longest chains


def test_every_cupy_name_the_runtime_uses_exists_in_cupy():
    cp = real_cupy()
    names = cupy_names(RUNTIME.read_text())
    assert {"RawModule", "cuda.Stream", "cuda.runtime.getDeviceCount", "asarray"} <= names
    missing = [n for n in names if functools.reduce(lambda o, a: getattr(o, a, None), n.split("."), cp) is None]
    assert missing == []
    assert cupy_names("cp.cuda.graph.capture_stream(s)") == {"cuda.graph.capture_stream"}
    assert functools.reduce(lambda o, a: getattr(o, a, None), ["cuda", "graph", "capture_stream"], cp) is None
