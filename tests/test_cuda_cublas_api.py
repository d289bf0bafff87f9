"""The CUDA target's cuBLAS calls checked against the real header, without a GPU (issue 17, item 5;
the CuPy side: tests/test_cuda_cupy_api.py).

* **cuBLAS**: every cuBLAS function ``runtime.py`` calls is declared in
  ``runtime.CUBLAS_PROTOTYPES`` (a scan of its source), and each declaration matches the prototype
  in ``cublas_api.h`` as NVIDIA's ``nvidia-cublas`` wheel ships it (in the ``test`` extra): the
  header preprocessed by ``nvcc -E``, every parameter and the return type reduced to an ABI class
  (``i32``, ``i64``, ``u64`` for size_t, ``f32``, ``f64``, pointer to a class) through the header's
  own typedefs and enums, then compared with the ctypes types: argument count, pointer or value,
  integer width and sign, float or double. The wheel's ``libcublas.so.13`` loads without a GPU:
  ``_load_cublas`` gives it the declared types and ``cublasGetProperty`` answers through them.

Where the wheel (or nvcc) is missing the tests are skipped, except in CI (``CI`` set), where they
fail: ``pip install -e '.[test]'`` brings it. Each check is shown to fail on a planted mismatch.
"""
from __future__ import annotations

import ast
import ctypes
import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import types
from pathlib import Path

import pytest

from bngraph.backends.cuda_target import runtime as cuda_runtime

RUNTIME = Path(cuda_runtime.__file__)


def need(thing, what: str):
    """``thing``, or skip (fail in CI: the test extra installs it) naming what is missing."""
    if thing is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{what} is missing: pip install -e '.[test]'")
    return thing


# ---- cuBLAS: the ctypes declarations against cublas_api.h ------------------------------------------


def cublas_header_dir():
    spec = importlib.util.find_spec("nvidia")
    found = [os.path.dirname(h) for p in (spec.submodule_search_locations if spec else [])
             for h in sorted(glob.glob(os.path.join(p, "cu*", "include", "cublas_api.h")))]
    return found[-1] if found else None


@functools.lru_cache(maxsize=None)
def preprocessed_header() -> str:
    """cublas_v2.h as the C compiler sees it (nvcc -E adds the toolkit's includes)."""
    include = need(cublas_header_dir(), "cublas_api.h (the nvidia-cublas wheel)")
    nvcc = need(shutil.which("nvcc"), "nvcc")
    proc = subprocess.run([nvcc, "-E", "-x", "c", "-I", include, "-"], input="#include <cublas_v2.h>\n",
                          capture_output=True, text=True, check=True)
    text = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("#"))
    return re.sub(r"\s+", " ", text)


class Header:
    """Prototypes and typedefs of a preprocessed C header, types reduced to ABI classes."""

    def __init__(self, text: str):
        self.text = text
        self.enums = set(re.findall(r"typedef enum\s*\w*\s*\{[^}]*\}\s*(\w+)\s*;", text))
        self.enums |= set(re.findall(r"typedef enum \w+ (\w+)\s*;", text))
        self.pointers = set(re.findall(r"typedef struct \w+\s*\*\s*(\w+)\s*;", text))
        self.aliases = dict((n, t) for t, n in re.findall(r"typedef ((?:[\w]+ )+?)(\w+)\s*;", text))

    def prototype(self, name: str):
        m = re.search(rf"([\w ]+?)\s*\b{name}\s*\(([^)]*)\)\s*;", self.text)
        assert m, f"{name} is not declared in cublas_api.h"
        params = [p.strip() for p in m.group(2).split(",") if p.strip() not in ("", "void")]
        return self.abi(m.group(1)), [self.abi(re.sub(r"\b\w+$", "", p) if not p.endswith("*") else p)
                                      for p in params]

    def abi(self, ctype: str):
        words = [w for w in re.findall(r"\w+|\*", ctype) if w not in ("const", "volatile", "struct", "enum",
                                                                      "extern")]
        if words and words[-1] == "*":
            return ("ptr", self.abi(" ".join(words[:-1])))
        if len(words) == 1 and words[0] in self.enums:
            return "i32"  # a C enum is an int
        if len(words) == 1 and words[0] in self.pointers:
            return ("ptr", "opaque")
        if len(words) == 1 and words[0] in self.aliases:
            return self.abi(self.aliases[words[0]])
        base = {"float": "f32", "double": "f64", "void": "void", "char": "i8"}
        if len(words) == 1 and words[0] in base:
            return base[words[0]]
        longs = words.count("long")
        if words and set(words) <= {"int", "long", "unsigned", "signed", "short"}:
            width = 64 if longs else 16 if "short" in words else 32  # LP64
            return f"{'u' if 'unsigned' in words else 'i'}{width}"
        raise AssertionError(f"cublas_api.h: cannot classify C type {ctype!r}")


def ctypes_abi(t):
    if t in (ctypes.c_void_p, ctypes.c_char_p):
        return ("ptr", "any")
    if isinstance(t, type) and issubclass(t, ctypes._Pointer):
        return ("ptr", ctypes_abi(t._type_))
    if isinstance(t, type) and issubclass(t, (ctypes.c_float, ctypes.c_double)):
        return "f32" if issubclass(t, ctypes.c_float) else "f64"
    if isinstance(t, type) and issubclass(t, ctypes._SimpleCData) and t._type_ in "bBhHiIlLqQ":
        return f"{'u' if t._type_.isupper() else 'i'}{8 * ctypes.sizeof(t)}"
    raise AssertionError(f"no ABI class for ctypes type {t!r}")


def matches(header, declared) -> bool:
    if declared == ("ptr", "any"):  # c_void_p: any pointer
        return isinstance(header, tuple)
    if isinstance(header, tuple) and isinstance(declared, tuple):
        return header[1] in ("void", "opaque") and declared[1] != "void" or matches(header[1], declared[1])
    return header == declared


def prototype_mismatches(header: Header, table: dict) -> list:
    """What in ``table`` (name -> (restype, argtypes)) disagrees with the header's prototypes."""
    out = []
    for name, (restype, argtypes) in table.items():
        ret, params = header.prototype(name)
        if not matches(ret, ctypes_abi(restype)):
            out.append(f"{name}: returns {ret}, declared {ctypes_abi(restype)}")
        if len(params) != len(argtypes):
            out.append(f"{name}: {len(params)} parameters, declared {len(argtypes)}")
            continue
        for i, (want, t) in enumerate(zip(params, argtypes)):
            if not matches(want, ctypes_abi(t)):
                out.append(f"{name}: argument {i + 1} is {want}, declared {ctypes_abi(t)}")
    return out


def cublas_calls(source: str) -> set:
    """The cuBLAS functions ``source`` names (``lib.cublasX``, ``self.lib.cublasX``)."""
    return {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute) and n.attr.startswith("cublas")}


def test_every_cublas_function_called_is_declared():
    called = cublas_calls(RUNTIME.read_text())
    assert {"cublasSgemm_v2", "cublasDgemm_v2", "cublasCreate_v2", "cublasDestroy_v2"} <= called
    assert called == set(cuda_runtime.CUBLAS_PROTOTYPES), called ^ set(cuda_runtime.CUBLAS_PROTOTYPES)
    planted = RUNTIME.read_text() + "\nstatus = lib.cublasSgemmEx(handle)\n"
    assert cublas_calls(planted) - set(cuda_runtime.CUBLAS_PROTOTYPES) == {"cublasSgemmEx"}


def test_the_declarations_match_cublas_api_h():
    header = Header(preprocessed_header())
    assert header.prototype("cublasSetWorkspace_v2") == ("i32", [("ptr", "opaque"), ("ptr", "void"), "u64"])
    assert header.prototype("cublasSgemm_v2")[1][6] == ("ptr", "f32") and header.abi("int64_t") == "i64"
    assert prototype_mismatches(header, cuda_runtime.CUBLAS_PROTOTYPES) == []


F32P, F64P = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_double)


def _planted(name, index, t):
    restype, argtypes = cuda_runtime.CUBLAS_PROTOTYPES[name]
    if index == "ret":
        return {name: (t, argtypes)}
    args = list(argtypes)
    if t is None:
        del args[index]
    else:
        args[index] = t
    return {name: (restype, tuple(args))}


@pytest.mark.parametrize("table, says", [
    (_planted("cublasSetWorkspace_v2", 2, ctypes.c_int), "argument 3 is u64, declared i32"),       # size_t
    (_planted("cublasSgemm_v2", 3, ctypes.c_int64), "argument 4 is i32, declared i64"),             # int width
    (_planted("cublasSgemm_v2", 6, F64P), "argument 7 is ('ptr', 'f32'), declared ('ptr', 'f64')"),  # float*
    (_planted("cublasDgemm_v2", 6, ctypes.c_double), "argument 7 is ('ptr', 'f64'), declared f64"),  # by value
    (_planted("cublasSetMathMode", 1, ctypes.c_void_p), "argument 2 is i32, declared ('ptr', 'any')"),  # enum
    (_planted("cublasDgemm_v2", 13, None), "14 parameters, declared 13"),
    (_planted("cublasSetWorkspace_v2", 1, ctypes.c_size_t), "argument 2 is ('ptr', 'void'), declared u64"),
    (_planted("cublasCreate_v2", 0, ctypes.POINTER(ctypes.c_int)),
     "argument 1 is ('ptr', ('ptr', 'opaque')), declared ('ptr', 'i32')"),                        # handle*
    (_planted("cublasDestroy_v2", "ret", ctypes.c_void_p), "returns i32, declared ('ptr', 'any')"),
], ids=["size_t", "int64", "double*", "by-value", "enum-as-pointer", "count", "pointer-as-size", "handle*",
        "restype"])
def test_a_planted_wrong_declaration_is_caught(table, says):
    assert prototype_mismatches(Header(preprocessed_header()), table) == [f"{next(iter(table))}: {says}"]


def test_the_wheels_cublas_loads_without_a_gpu_with_the_declared_types(monkeypatch):
    need(cublas_header_dir(), "the nvidia-cublas wheel")
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(runtimeGetVersion=lambda: 13000), get_cuda_path=lambda: None))
    lib = cuda_runtime._load_cublas(cupy)
    for name, (restype, argtypes) in cuda_runtime.CUBLAS_PROTOTYPES.items():
        fn = getattr(lib, name)
        assert fn.restype is restype and tuple(fn.argtypes) == argtypes, name
    major = ctypes.c_int()
    assert lib.cublasGetProperty(0, ctypes.byref(major)) == 0 and major.value == 13
    with pytest.raises(ctypes.ArgumentError):  # ctypes now refuses a double where cuBLAS reads a float
        lib.cublasSgemm_v2(None, 0, 0, 1, 1, 1, ctypes.byref(ctypes.c_double(1.0)), None, 1, None, 1, None, None, 1)
