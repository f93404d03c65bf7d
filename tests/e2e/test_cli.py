"""Command line, config file, start-up logging, admin key generation,
signals."""

import os
import re
import signal
import stat

from harness import (Fail, Settings, Skip, T, check, eq, expect_error, expect_json,
                     expect_status, free_port, port_open, wait_until)

FLAGS = ["-c", "--admin-listen", "--admin-key", "--store", "--config-listen", "--state-dir",
         "--log-level", "--help", "--version"]


def expect_exit2(ctx, args, what, cwd=None, names=None):
    """Runs the daemon with args; it must exit 2 with exactly one line on
    stderr (naming each of names, if given) and not be left running."""
    cwd = cwd or ctx.tmpdir()
    rc, out, err = ctx.run([Settings.cp_bin()] + args, timeout=10, cwd=cwd)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc != 2:
        raise Fail("%s: expected exit 2, got %s (stderr: %r)" % (what, rc, err.strip()[:400]))
    if len(lines) != 1:
        raise Fail("%s: expected exactly one line on stderr, got %d: %r" % (
            what, len(lines), err.strip()[:600]))
    for n in names or []:
        if n not in lines[0]:
            raise Fail("%s: stderr line does not name %r: %r" % (what, n, lines[0]))
    return lines[0]


def base_args(ctx):
    """Flags that keep an accidental start harmless (free ports, temp dir)."""
    return ["--admin-listen", "127.0.0.1:%d" % free_port(), "--config-listen",
            "127.0.0.1:%d" % free_port(), "--state-dir", os.path.join(ctx.tmpdir(), "st"),
            "--admin-key", "cli-test-key"]


def write(ctx, text):
    p = os.path.join(ctx.tmpdir(), "airgw.yaml")
    with open(p, "w") as f:
        f.write(text)
    return p


def good_config(admin_port, config_port, state_dir, extra=""):
    return """deployment:
  admin:
    admin_listen: {ip: 127.0.0.1, port: %d}
    admin_key:
      - {name: admin, key: file-admin-key, role: admin}
      - {name: viewer, key: file-viewer-key, role: viewer}
  config_stream:
    listen: 127.0.0.1:%d
  state_dir: %s
%s""" % (admin_port, config_port, state_dir, extra)


# ---------------------------------------------------------------------------


def test_help_lists_every_flag(ctx):
    rc, out, err = ctx.run([Settings.cp_bin(), "--help"])
    eq(rc, 0, "--help exit status")
    text = out + err
    check(text.strip(), "--help printed nothing")
    for flag in FLAGS:
        pat = r"(^|[\s,\[|])%s\b" % re.escape(flag)
        check(re.search(pat, text, re.M), "--help does not list %s: %r" % (flag, text[:800]))


def test_version_prints_version(ctx):
    rc, out, err = ctx.run([Settings.cp_bin(), "--version"])
    eq(rc, 0, "--version exit status")
    check(re.search(r"\d+\.\d+\.\d+", out + err), "--version output has no x.y.z: %r" % (out + err))


def test_unknown_flag_exits_2(ctx):
    expect_exit2(ctx, base_args(ctx) + ["--bogus"], "--bogus")
    expect_exit2(ctx, ["-Z"], "-Z")


def test_invalid_flag_values_exit_2(ctx):
    cases = [
        (["--admin-listen", "nonsense"], "--admin-listen nonsense"),
        (["--admin-listen", "127.0.0.1:70000"], "--admin-listen port 70000"),
        (["--admin-listen", "127.0.0.1:"], "--admin-listen without port"),
        (["--config-listen", "127.0.0.1:abc"], "--config-listen port abc"),
        (["--log-level", "shouty"], "--log-level shouty"),
        (["--store", "mysql:/tmp/x"], "--store mysql:"),
        (["--admin-key", ""], "--admin-key empty"),
    ]
    for extra, what in cases:
        expect_exit2(ctx, base_args(ctx) + extra, what)
    # A flag missing its value.
    expect_exit2(ctx, ["--state-dir", os.path.join(ctx.tmpdir(), "s"), "--admin-listen"],
                 "--admin-listen without value")


def test_missing_config_file_exits_2(ctx):
    expect_exit2(ctx, base_args(ctx) + ["-c", "/nonexistent/dir/airgw.yaml"], "missing -c file")


def test_invalid_yaml_exits_2(ctx):
    p = write(ctx, "deployment:\n  admin: [unclosed\n  : : :\n")
    expect_exit2(ctx, base_args(ctx) + ["-c", p], "broken YAML")
    p = write(ctx, "- just\n- a list\n")
    expect_exit2(ctx, base_args(ctx) + ["-c", p], "YAML whose top level is a list")


def test_invalid_config_values_exit_2(ctx):
    st = os.path.join(ctx.tmpdir(), "st")
    cases = [
        ("  config_stream:\n    heartbeat_interval: abc\n", "heartbeat_interval abc"),
        ("  config_stream:\n    heartbeat_interval: -1\n", "heartbeat_interval -1"),
        ("  config_stream:\n    max_pending_bytes: -5\n", "max_pending_bytes -5"),
        ("  config_stream:\n    listen: 127.0.0.1:99999\n", "config_stream.listen port 99999"),
        ("  log_level: loud\n", "log_level loud"),
        ("  store: bogus:/x\n", "store bogus:"),
    ]
    for extra, what in cases:
        text = "deployment:\n  admin:\n    admin_key:\n      - {name: a, key: k1, role: admin}\n" \
               "  state_dir: %s\n%s" % (st, extra)
        expect_exit2(ctx, ["-c", write(ctx, text)], what)
    text = ("deployment:\n  admin:\n    admin_listen: {ip: 127.0.0.1, port: 70000}\n"
            "    admin_key:\n      - {name: a, key: k1, role: admin}\n  state_dir: %s\n" % st)
    expect_exit2(ctx, ["-c", write(ctx, text)], "admin_listen port 70000")
    text = ("deployment:\n  admin:\n    allow_admin: [not-a-cidr]\n"
            "    admin_key:\n      - {name: a, key: k1, role: admin}\n  state_dir: %s\n" % st)
    expect_exit2(ctx, ["-c", write(ctx, text)], "allow_admin not-a-cidr")
    text = ("deployment:\n  admin:\n    admin_key:\n      - {name: a, key: k1, role: superuser}\n"
            "  state_dir: %s\n" % st)
    expect_exit2(ctx, ["-c", write(ctx, text)], "admin_key role superuser")


def test_unknown_deployment_key_exits_2_naming_it(ctx):
    st = os.path.join(ctx.tmpdir(), "st")
    text = "deployment:\n  state_dir: %s\n  bogus_setting: 1\n" % st
    expect_exit2(ctx, ["--admin-key", "k", "-c", write(ctx, text)], "deployment.bogus_setting",
                 names=["bogus_setting"])
    text = "deployment:\n  state_dir: %s\n  config_stream:\n    hartbeat_interval: 1\n" % st
    expect_exit2(ctx, ["--admin-key", "k", "-c", write(ctx, text)],
                 "deployment.config_stream.hartbeat_interval", names=["hartbeat_interval"])
    text = "deployment:\n  state_dir: %s\n  admin:\n    admin_lissten: {ip: 127.0.0.1}\n" % st
    expect_exit2(ctx, ["--admin-key", "k", "-c", write(ctx, text)],
                 "deployment.admin.admin_lissten", names=["admin_lissten"])


def test_unknown_top_level_key_exits_2(ctx):
    st = os.path.join(ctx.tmpdir(), "st")
    text = "deployment:\n  state_dir: %s\nfrobnicate:\n  x: 1\n" % st
    expect_exit2(ctx, ["--admin-key", "k", "-c", write(ctx, text)], "top-level frobnicate")


def test_apisix_sections_ignored_with_warning(ctx):
    cfg = {
        "apisix": {"node_listen": 9080, "enable_admin": True},
        "nginx_config": {"error_log_level": "warn"},
        "plugins": ["key-auth", "limit-count"],
        "stream_plugins": ["mqtt-proxy"],
        "plugin_attr": {"prometheus": {"export_uri": "/metrics"}},
        "deployment": {"config_stream": {"heartbeat_interval": 5}},
    }
    d = ctx.daemon(config=cfg)
    err = d.stderr()
    for section in ("apisix", "nginx_config", "stream_plugins", "plugin_attr"):
        check(re.search(r"\b%s\b" % section, err),
              "no warning naming ignored section %r on stderr: %r" % (section, err[-800:]))
    check(re.search(r"\bplugins\b", err), "no warning naming ignored section 'plugins'")
    expect_json(d.get("/healthz", key=None), 200, {"status": "ok"})


def test_config_file_state_dir_used(ctx):
    st = os.path.join(ctx.tmpdir(), "state")
    text = good_config(free_port(), free_port(), st)
    d = ctx.daemon(config=text, admin_key=None, listen=False, state_dir=None)
    expect_status(d.put("upstreams/u1", upstream_body(), key="file-admin-key"), 201)
    check(os.path.exists(os.path.join(st, "airgw.db")),
          "store not in the config file's state_dir %s" % st)
    check(not os.path.exists(os.path.join(st, "admin.key")),
          "admin.key generated although the config file has an admin key")


def test_config_file_settings_applied(ctx):
    ap, cp = free_port(), free_port()
    st = os.path.join(ctx.tmpdir(), "state")
    dbdir = ctx.tmpdir()
    db = os.path.join(dbdir, "custom.db")
    text = good_config(ap, cp, st, "  store: sqlite:%s\n  log_level: info\n" % db)
    d = ctx.daemon(config=text, admin_key=None, listen=False, state_dir=None)
    eq((d.admin_port, d.config_port), (ap, cp), "ports from the config file")
    expect_status(d.get("routes", key="file-admin-key"), 200)
    expect_status(d.get("routes", key="file-viewer-key"), 200)
    expect_error(d.put("routes/1", {"uri": "/a", "upstream": {"type": "roundrobin", "nodes": {
        "127.0.0.1:80": 1}}}, key="file-viewer-key"), 401,
        exact="failed to check token")
    expect_status(d.put("upstreams/u1", {"type": "roundrobin", "nodes": {"127.0.0.1:80": 1}},
                        key="file-admin-key"), 201)
    check(os.path.exists(db), "store file %s not created (store: sqlite:PATH)" % db)
    check(not os.path.exists(os.path.join(st, "admin.key")),
          "admin.key generated although the config file has an admin key")
    w = ctx.watch(d)
    _, puts, end, _ = w.snapshot()
    eq([m["key"] for m in puts], ["/apisix/upstreams/u1"], "snapshot keys via config_stream.listen")


def test_flags_override_config_file(ctx):
    file_admin, file_cfg = free_port(), free_port()
    st_file = os.path.join(ctx.tmpdir(), "state-file")
    text = good_config(file_admin, file_cfg, st_file)
    d = ctx.daemon(config=text, admin_key="flag-admin-key")  # listen flags on other ports
    check(d.admin_port != file_admin, "test setup: ports should differ")
    expect_status(d.get("routes", key="flag-admin-key"), 200)
    check(not port_open(file_admin), "config file's admin port %d is open although "
          "--admin-listen overrides it" % file_admin)
    check(not port_open(file_cfg), "config file's config stream port %d is open although "
          "--config-listen overrides it" % file_cfg)
    check(os.path.isdir(d.state_dir), "--state-dir %s not used" % d.state_dir)
    check(not os.path.exists(st_file), "config file's state_dir used although --state-dir "
          "overrides it")


def test_listening_log_lines_and_port_zero(ctx):
    d = ctx.daemon(listen=False, args=["--admin-listen", "127.0.0.1:0",
                                       "--config-listen", "127.0.0.1:0"], wait_ready=False)
    ok = wait_until(lambda: re.search(r"admin API listening on 127\.0\.0\.1:(\d+)", d.stderr())
                    and re.search(r"config stream listening on 127\.0\.0\.1:(\d+)", d.stderr())
                    or not d.running(), T(10))
    err = d.stderr()
    ma = re.search(r"admin API listening on 127\.0\.0\.1:(\d+)", err)
    ms = re.search(r"config stream listening on 127\.0\.0\.1:(\d+)", err)
    check(ma, "no 'admin API listening on 127.0.0.1:PORT' line: %r" % err[-600:])
    check(ms, "no 'config stream listening on 127.0.0.1:PORT' line: %r" % err[-600:])
    d.admin_port, d.config_port = int(ma.group(1)), int(ms.group(1))
    check(d.admin_port != 0 and d.config_port != 0, "log shows port 0, not the real port")
    expect_json(d.get("/healthz", key=None), 200, {"status": "ok"})
    w = ctx.watch(d)
    begin, puts, end, _ = w.snapshot()
    eq((begin["revision"], end["revision"], end["count"], len(puts)), (0, 0, 0, 0),
       "empty snapshot (begin.revision, end.revision, end.count, PUTs)")


def test_default_state_dir_and_store(ctx):
    cwd = ctx.tmpdir()
    d = ctx.daemon(state_dir=None, cwd=cwd)
    expect_status(d.put("upstreams/1", {"type": "roundrobin", "nodes": {"127.0.0.1:80": 1}}), 201)
    db = os.path.join(cwd, "airgw-data", "airgw.db")
    check(os.path.exists(db), "default store ./airgw-data/airgw.db not created (cwd %s: %s)" % (
        cwd, os.listdir(cwd)))


def test_default_ports(ctx):
    if port_open(9180) or port_open(9280):
        raise Skip("9180 or 9280 busy on this machine")
    d = ctx.daemon(listen=False, wait_ready=False)
    wait_until(lambda: (re.search(r"admin API listening", d.stderr()) and
                        re.search(r"config stream listening", d.stderr())) or not d.running(),
               T(10))
    err = d.stderr()
    check("admin API listening on 127.0.0.1:9180" in err,
          "default admin listen is not 127.0.0.1:9180: %r" % err[-500:])
    check("config stream listening on 127.0.0.1:9280" in err,
          "default config stream listen is not 127.0.0.1:9280: %r" % err[-500:])
    d.admin_port = 9180
    expect_json(d.get("/healthz", key=None), 200, {"status": "ok"})


def test_generated_admin_key(ctx):
    d = ctx.daemon(admin_key=None)
    m = re.search(r"admin key: (\S+)", d.stderr())
    check(m, "no 'admin key: KEY' line on stderr: %r" % d.stderr()[-600:])
    key = m.group(1)
    path = os.path.join(d.state_dir, "admin.key")
    check(os.path.exists(path), "%s not created" % path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    eq(oct(mode), oct(0o600), "admin.key mode")
    with open(path) as f:
        stored = f.read().strip()
    eq(stored, key, "admin.key content vs logged key")
    expect_status(d.get("routes", key=key), 200)
    expect_error(d.get("routes", key=key + "x"), 401, exact="failed to check token")
    expect_status(d.put("upstreams/1", upstream_body(), key=key), 201)
    # Reused on the next start.
    d.restart()
    expect_status(d.get("routes", key=key), 200)
    with open(path) as f:
        eq(f.read().strip(), key, "admin.key after restart")
    # A different state dir gets a different key.
    d2 = ctx.daemon(admin_key=None)
    m2 = re.search(r"admin key: (\S+)", d2.stderr())
    check(m2, "second daemon logged no admin key")
    check(m2.group(1) != key, "two fresh state dirs generated the same admin key %r" % key)
    expect_error(d2.get("routes", key=key), 401, exact="failed to check token")


def upstream_body():
    return {"type": "roundrobin", "nodes": {"127.0.0.1:80": 1}}


def test_configured_key_generates_nothing(ctx):
    d = ctx.daemon(admin_key="my-configured-key")
    check(not os.path.exists(os.path.join(d.state_dir, "admin.key")),
          "admin.key generated although --admin-key was given")
    check("my-configured-key" not in d.stderr(), "the configured key was logged: %r" %
          d.stderr()[-400:])
    expect_status(d.get("routes", key="my-configured-key"), 200)


def test_viewer_only_config_still_generates_admin_key(ctx):
    cfg = {"deployment": {"admin": {"admin_key": [
        {"name": "viewer", "key": "only-viewer-key", "role": "viewer"}]}}}
    d = ctx.daemon(config=cfg, admin_key=None)
    m = re.search(r"admin key: (\S+)", d.stderr())
    check(m, "no admin-role key configured (only a viewer), but no admin key generated: %r" %
          d.stderr()[-500:])
    check(os.path.exists(os.path.join(d.state_dir, "admin.key")), "admin.key not created")
    expect_status(d.put("upstreams/1", upstream_body(), key=m.group(1)), 201)
    expect_status(d.get("upstreams/1", key="only-viewer-key"), 200)


def test_sigint_exits_0(ctx):
    d = ctx.daemon()
    expect_status(d.get("routes"), 200)
    d.stop(sig=signal.SIGINT)


def test_sigterm_exits_0_promptly(ctx):
    d = ctx.daemon()
    expect_status(d.put("upstreams/1", upstream_body()), 201)
    d.stop(sig=signal.SIGTERM, timeout=T(3))


def test_log_levels_accepted(ctx):
    for level in ("debug", "info", "warn", "error"):
        # "listening on" lines are info: at warn/error wait for the port instead.
        d = ctx.daemon(args=["--log-level", level], wait_ready=False)
        ok = wait_until(lambda: not d.running() or
                        d.get("/healthz", key=None, timeout=2).status == 200, T(10), 0.1)
        check(ok and d.running(), "--log-level %s: not serving (exit %s): %r" % (
            level, d.proc.poll(), d.stderr()[-300:]))
        d.stop()


def test_unusable_store_fails_cleanly(ctx):
    f = os.path.join(ctx.tmpdir(), "a-file")
    with open(f, "w") as fh:
        fh.write("x")
    # The store's directory is a regular file: the store cannot be opened.
    rc, out, err = ctx.run([Settings.cp_bin()] + base_args(ctx) +
                           ["--store", "sqlite:%s/sub/airgw.db" % f], timeout=10)
    check(rc not in (0, None) and rc > 0, "exit status %s with an unusable store" % rc)
    check(err.strip(), "no message on stderr for an unusable store")
    for mark in ("Sanitizer", "runtime error"):
        check(mark not in err, "sanitizer report: %r" % err[-600:])


def second_instance(ctx, argv, what):
    """Runs a daemon that must fail to start; returns its stderr."""
    try:
        rc, out, err = ctx.run(argv, timeout=4)
    except Fail:
        raise Fail("a second control plane started and kept running although %s was "
                   "already in use (SO_REUSEPORT?): two control planes now share it" % what)
    check(rc not in (0, None) and rc > 0, "exit status %s when %s is in use" % (rc, what))
    return err


def test_ports_in_use_fail_cleanly(ctx):
    a = ctx.daemon()
    st = os.path.join(ctx.tmpdir(), "st")
    err = second_instance(ctx, [Settings.cp_bin(), "--admin-listen", "127.0.0.1:%d" % a.admin_port,
                                "--config-listen", "127.0.0.1:%d" % free_port(),
                                "--admin-key", "k", "--state-dir", st],
                          "the admin port %d" % a.admin_port)
    check(str(a.admin_port) in err, "stderr does not name the busy address: %r" % err[-400:])
    err = second_instance(ctx, [Settings.cp_bin(), "--admin-listen", "127.0.0.1:%d" % free_port(),
                                "--config-listen", "127.0.0.1:%d" % a.config_port,
                                "--admin-key", "k", "--state-dir", st],
                          "the config stream port %d" % a.config_port)
    check(str(a.config_port) in err, "stderr does not name the busy address: %r" % err[-400:])
    expect_json(a.get("/healthz", key=None), 200, {"status": "ok"})
