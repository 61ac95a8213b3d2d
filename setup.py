"""Build the C core `ctxlookup._core` from csrc/*.c.

OpenBLAS, libcurl and cJSON are found with pkg-config (Debian: libopenblas-dev,
libcurl4-openssl-dev, libcjson-dev). For unusual installs, override per library with
environment variables, e.g. ``CTXLOOKUP_OPENBLAS_CFLAGS="-I/opt/ob/include"`` and
``CTXLOOKUP_OPENBLAS_LIBS="-L/opt/ob/lib -lopenblas"`` (likewise ``CURL`` and ``CJSON``),
or ``CTXLOOKUP_PKG_OPENBLAS=openblas64`` to name another pkg-config module.
``CTXLOOKUP_CFLAGS`` and ``CTXLOOKUP_LDFLAGS`` add compiler and linker flags (`make sanitize-py` uses them).
"""
import glob
import os
import shlex
import subprocess

import numpy
from setuptools import Extension, setup

LIBS = {"OPENBLAS": "openblas", "CURL": "libcurl", "CJSON": "libcjson"}


def _pkg_config(var, module):
    cflags = os.environ.get(f"CTXLOOKUP_{var}_CFLAGS")
    libs = os.environ.get(f"CTXLOOKUP_{var}_LIBS")
    if cflags is not None and libs is not None:
        return shlex.split(cflags), shlex.split(libs)
    module = os.environ.get(f"CTXLOOKUP_PKG_{var}", module)
    try:
        c = subprocess.check_output(["pkg-config", "--cflags", module], text=True)
        l = subprocess.check_output(["pkg-config", "--libs", module], text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(
            f"ctxlookup: pkg-config could not find '{module}' ({e}). Install it "
            f"(Debian: apt-get install libopenblas-dev libcurl4-openssl-dev libcjson-dev pkg-config) "
            f"or set CTXLOOKUP_{var}_CFLAGS and CTXLOOKUP_{var}_LIBS."
        )
    return shlex.split(cflags if cflags is not None else c), shlex.split(libs if libs is not None else l)


def _extension():
    include_dirs, library_dirs, libraries, extra_compile, extra_link = [numpy.get_include(), "csrc"], [], [], [], []
    for var, module in LIBS.items():
        cflags, libs = _pkg_config(var, module)
        for f in cflags:
            (include_dirs.append(f[2:]) if f.startswith("-I") else extra_compile.append(f))
        for f in libs:
            if f.startswith("-L"):
                library_dirs.append(f[2:])
            elif f.startswith("-l"):
                libraries.append(f[2:])
            else:
                extra_link.append(f)
    extra_compile += ["-std=c11", "-O3", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter",
                      "-Wno-missing-field-initializers", "-fno-math-errno", "-DNDEBUG",
                      "-D_GNU_SOURCE", "-DNPY_NO_DEPRECATED_API=NPY_1_20_API_VERSION"]
    extra_compile += shlex.split(os.environ.get("CTXLOOKUP_CFLAGS", ""))
    extra_link += ["-fopenmp"] + shlex.split(os.environ.get("CTXLOOKUP_LDFLAGS", ""))
    # rpath so a non-system OpenBLAS found through pkg-config is found at run time too
    extra_link += [f"-Wl,-rpath,{d}" for d in library_dirs]
    return Extension(
        "ctxlookup._core",
        sources=sorted(glob.glob("csrc/*.c")),
        depends=sorted(glob.glob("csrc/*.h")),
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        libraries=libraries,
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )


setup(ext_modules=[_extension()])
