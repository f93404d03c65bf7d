#!/usr/bin/env python3
"""
Runs airgw's end-to-end tests.

  python3 tests/e2e/run_all.py --build-dir DIR [-k SUBSTRING] [--keep] [-v]

Finds DIR/controlplane/airgw-controlplane and DIR/proto/airgw-cfgwatch, runs
every test function of every tests/e2e/test_*.py (in file order, then
definition order), prints one line per test ("ok NAME (time)" or
"FAIL NAME: reason" followed by the tails of the daemons' stderr), and ends
with "N passed, N failed". Exit status 1 if any test failed.

-k keeps only tests whose "module.function" name contains SUBSTRING (may be
given several times: any match). AIRGW_SANITIZER=1 means the binaries are
ASan/UBSan builds: timeouts are tripled (every daemon stopped with SIGTERM
must exit 0 with no sanitizer report in any mode). --keep (or
AIRGW_E2E_KEEP=1) leaves the temp directories for inspection.

--store etcd (or AIRGW_E2E_STORE=etcd) runs the suite against a real etcd
started for the run: every control plane that does not pick a store itself
uses it, under a key prefix of its own. Only modules that list "etcd" in
their STORES attribute run (default ("sqlite",)), and of those only tests
not marked otherwise with @harness.stores(...).
"""

import argparse
import glob
import importlib.util
import inspect
import os
import shutil
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402
from harness import Ctx, Fail, ModuleState, Settings, Skip, finish_module  # noqa: E402


def load_module(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return name, mod


def test_functions(mod):
    fns = [(n, f) for n, f in vars(mod).items()
           if n.startswith("test_") and inspect.isfunction(f) and f.__module__ == mod.__name__]
    fns.sort(key=lambda nf: nf[1].__code__.co_firstlineno)
    return fns


def main():
    ap = argparse.ArgumentParser(description="airgw end-to-end tests")
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("-k", action="append", default=[], help="run tests whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep temp directories")
    ap.add_argument("-v", action="store_true", help="print diagnostics for passing tests too")
    ap.add_argument("--store", choices=["sqlite", "etcd"],
                    default=os.environ.get("AIRGW_E2E_STORE") or "sqlite",
                    help="store of the control planes (default sqlite)")
    opts = ap.parse_args()

    Settings.build_dir = os.path.abspath(opts.build_dir)
    Settings.sanitizer = os.environ.get("AIRGW_SANITIZER") == "1"
    Settings.scale = 3.0 if Settings.sanitizer else 1.0
    Settings.keep = opts.keep or os.environ.get("AIRGW_E2E_KEEP") == "1"
    Settings.verbose = opts.v
    Settings.store = opts.store

    passed = failed = skipped = 0
    missing = [p for p in (Settings.cp_bin(), Settings.watch_bin()) if not os.access(p, os.X_OK)]
    if shutil.which("curl") is None:
        missing.append("curl (not on PATH)")
    if opts.store == "etcd":
        import etcd_harness
        why = etcd_harness.available()
        if why:
            missing.append(why)
    if missing:
        print("FAIL setup: missing binaries: %s" % ", ".join(missing))
        print("0 passed, 1 failed")
        return 1

    t_start = time.monotonic()
    other_store = 0
    if opts.store != "sqlite":
        try:
            print("store: %s at %s" % (opts.store, etcd_harness.shared_etcd().url))
        except Fail as e:
            print("FAIL setup: cannot start etcd: %s" % e)
            print("0 passed, 1 failed")
            return 1
    try:
        for path in sorted(glob.glob(os.path.join(HERE, "test_*.py"))):
            try:
                modname, mod = load_module(path)
            except Exception:  # noqa: BLE001
                print("FAIL %s: cannot import: %s" % (os.path.basename(path),
                                                      traceback.format_exc(limit=3)))
                failed += 1
                continue
            if opts.store not in getattr(mod, "STORES", ("sqlite",)):
                continue
            tests = [(n, f) for n, f in test_functions(mod)
                     if not opts.k or any(k in "%s.%s" % (modname, n) for k in opts.k)]
            n_all = len(tests)
            tests = [(n, f) for n, f in tests if opts.store in getattr(f, "stores", (opts.store,))]
            other_store += n_all - len(tests)
            if not tests:
                continue
            ms = ModuleState(modname)
            for name, fn in tests:
                full = "%s.%s" % (modname, name)
                ctx = Ctx(ms)
                t0 = time.monotonic()
                err = None
                skip = None
                try:
                    fn(ctx)
                except Skip as e:
                    skip = str(e)
                except Fail as e:
                    err = str(e)
                except Exception:  # noqa: BLE001
                    err = "exception: " + traceback.format_exc(limit=6).strip().replace(
                        "\n", "\n    ")
                problems = ctx.finish()
                if problems and err is None:
                    err = "; ".join(problems)
                elif problems:
                    err += " [also: %s]" % "; ".join(problems)
                dt = time.monotonic() - t0
                if err is not None:
                    failed += 1
                    print("FAIL %s: %s" % (full, err))
                    for ln in ctx.diagnostics():
                        print(ln)
                elif skip is not None:
                    skipped += 1
                    print("skip %s: %s" % (full, skip))
                else:
                    passed += 1
                    print("ok   %s (%.2fs)" % (full, dt))
                    if Settings.verbose:
                        for ln in ctx.diagnostics():
                            print(ln)
                sys.stdout.flush()
            # Shared daemons are stopped (and checked) once the module is done.
            for d, problem in finish_module(ms):
                failed += 1
                print("FAIL %s.shutdown[%s]: %s" % (modname, d.name, problem))
                for ln in d.tail():
                    print("    " + ln)
                sys.stdout.flush()
        if opts.store == "etcd":
            problem = etcd_harness.stop_shared_etcd()
            if problem:
                failed += 1
                print("FAIL etcd.shutdown: %s" % problem)
    finally:
        harness.kill_leftovers()
        harness.cleanup_tmp()
    if other_store:
        print("(%d tests are for other stores than %s: not run)" % (other_store, opts.store))
    if skipped:
        print("(%d skipped, %.1fs)" % (skipped, time.monotonic() - t_start))
    else:
        print("(%.1fs)" % (time.monotonic() - t_start))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
