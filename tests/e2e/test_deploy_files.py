"""deploy/: the Dockerfile, docker-compose.yml, the configs it mounts and the
systemd units. No docker engine runs here, so:

- the compose file goes through Debian's docker-compose (`config -q`, then its
  resolved form is read to check the topology: 3 etcd members, 2 control
  planes on etcd, a scalable dataplane service, 2 brokers, an upstream, the
  Admin API on 9180);
- the Dockerfile goes through a real linter (dockerfile-utils from npm,
  installed by ./airgw.sh test) and through checks no linter makes: multi-stage,
  build stage with airgw.sh's RUN_PKGS, debian:12-slim runtime with no build
  tools and every library the built binaries load, a non-root USER;
- the systemd units go through `systemd-analyze verify` (works without a
  running systemd) and checks of their hardening keys;
- every config compose mounts starts the daemon it is for (addresses
  rewritten to loopback, a real etcd for the control plane's store), and the
  mosquitto.conf starts a real mosquitto.
"""
import json
import os
import re
import shlex
import shutil
import subprocess

from harness import Fail, Settings, T, check, eq, free_port, new_tmpdir, read_text, wait_until
from dp_harness import dp_bin, new_dp
from mqtt_harness import mosquitto_bin
import etcd_harness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
COMPOSE = os.path.join(DEPLOY, "docker-compose.yml")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
KEY = "0123456789abcdef0123456789abcdef"

# Build tools that must never reach the runtime stage.
BUILD_TOOLS = {"gcc", "g++", "clang", "make", "meson", "ninja-build", "pkg-config", "cmake",
               "build-essential", "python3", "node-llhttp"}
# Packages debian:12-slim already has (Priority required): the C and C++ runtimes.
SLIM_BASE = {"libc6", "libgcc-s1", "libstdc++6"}


def text(path):
    with open(path) as f:
        return f.read()


def need(tool, how):
    if shutil.which(tool) is None:
        raise Fail("%s is not installed (%s); ./airgw.sh test installs it" % (tool, how))


def compose(*args, env_key=KEY):
    need("docker-compose", "Debian package docker-compose")
    env = dict(os.environ)
    env.pop("AIRGW_ADMIN_KEY", None)
    if env_key is not None:
        env["AIRGW_ADMIN_KEY"] = env_key
    p = subprocess.run(["docker-compose", "-f", COMPOSE] + list(args), env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60, cwd=ROOT)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def resolved():
    """docker-compose's resolved configuration as a dict (its YAML read with
    PyYAML, which Debian's docker-compose itself depends on)."""
    rc, out, err = compose("config")
    check(rc == 0, "docker-compose config: exit %d: %s" % (rc, err.strip()))
    import yaml  # python3-yaml: a dependency of docker-compose
    return yaml.safe_load(out)


def argv_of(svc):
    c = svc.get("command") or []
    return shlex.split(c) if isinstance(c, str) else [str(x) for x in c]


def published(svc):
    """[(host_ip, published, target)] of a service's ports (both forms)."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.append(("", str(p.get("published", "")), str(p.get("target"))))
        else:
            m = re.match(r"^(?:([\d.]+):)?(?:([\d-]+):)?(\d+)(?:/\w+)?$", str(p))
            check(m, "cannot read port %r" % p)
            out.append((m.group(1) or "", m.group(2) or "", m.group(3)))
    return out


def mounted_files(svc):
    """Host paths of a service's bind mounts."""
    out = []
    for v in svc.get("volumes") or []:
        src = v.get("source") if isinstance(v, dict) else str(v).split(":")[0]
        if src and src.startswith("/"):
            out.append(src)
    return out


# ---------------------------------------------------------------------------
# docker-compose.yml


def test_compose_file_is_valid_for_docker_compose(ctx):
    rc, out, err = compose("config", "-q")
    eq(rc, 0, "docker-compose config -q exit code (stderr: %s)" % err.strip())
    check(err.strip() == "", "docker-compose config -q warned: %s" % err.strip())
    version = re.search(r"^version:\s*['\"]?([\d.]+)", text(COMPOSE), re.M)
    check(version is None or version.group(1) in ("3.8", "3.7", "3"),
          "compose file version %s: docker-compose 1.29 needs 3.x" % (version and version.group(1)))


def test_compose_has_no_default_admin_key(ctx):
    rc, out, err = compose("config", "-q", env_key=None)
    check(rc != 0, "docker-compose config without AIRGW_ADMIN_KEY must fail (no default key)")
    check("AIRGW_ADMIN_KEY" in err, "the error names AIRGW_ADMIN_KEY: %s" % err.strip())
    check(KEY not in text(COMPOSE), "no key written in the compose file")


def test_compose_topology(ctx):
    c = resolved()
    svcs = c["services"]
    by_role = {"etcd": [], "controlplane": [], "dataplane": [], "mosquitto": []}
    for name, s in svcs.items():
        img, argv = str(s.get("image", "")), argv_of(s)
        if "etcd" in img.split("/")[-1].split(":")[0]:
            by_role["etcd"].append(name)
        elif argv[:1] == ["airgw-controlplane"]:
            by_role["controlplane"].append(name)
        elif argv[:1] == ["airgw-dataplane"]:
            by_role["dataplane"].append(name)
        elif "mosquitto" in img:
            by_role["mosquitto"].append(name)
    eq(len(by_role["etcd"]), 3, "etcd members (%s)" % by_role["etcd"])
    eq(len(by_role["controlplane"]), 2, "control planes (%s)" % by_role["controlplane"])
    eq(len(by_role["dataplane"]), 1, "dataplane services (%s)" % by_role["dataplane"])
    eq(len(by_role["mosquitto"]), 2, "mosquitto brokers (%s)" % by_role["mosquitto"])
    check("upstream" in svcs, "an HTTP upstream service named upstream")

    # The etcd members form one cluster that names all three.
    for name in by_role["etcd"]:
        s = svcs[name]
        env = s.get("environment") or {}
        cluster = env.get("ETCD_INITIAL_CLUSTER", "")
        for other in by_role["etcd"]:
            check("%s=http://%s:2380" % (other, other) in cluster,
                  "%s: initial cluster %r lacks %s" % (name, cluster, other))
        check("--name" in argv_of(s) and name in argv_of(s), "%s: --name %s" % (name, name))

    # Control planes: the mounted config uses the etcd store with all members;
    # the Admin API is published on host port 9180 (the second on another port).
    hosts = []
    cp_addrs = []
    for name in by_role["controlplane"]:
        s = svcs[name]
        argv = argv_of(s)
        conf = argv[argv.index("-c") + 1]
        host_conf = host_path(s, conf)
        check(host_conf and os.path.exists(host_conf),
              "%s: its config %s is mounted from the repository" % (name, conf))
        endpoints = etcd_endpoints(host_conf)
        for e in by_role["etcd"]:
            check("http://%s:2379" % e in endpoints, "%s: etcd store lists %s (%s)" % (
                name, e, endpoints))
        check("--admin-key" in argv, "%s: admin key from the environment" % name)
        for hip, pub, target in published(s):
            if target == "9180":
                hosts.append(pub)
        nets = s.get("networks") or {}
        addr = [v.get("ipv4_address") for v in nets.values() if isinstance(v, dict)]
        check(addr and addr[0], "%s has a fixed address (data planes name it by IP)" % name)
        cp_addrs.append(addr[0])
    check("9180" in hosts, "the Admin API is published on host port 9180 (%s)" % hosts)
    eq(len(set(hosts)), 2, "each control plane's Admin API on its own host port")

    # The data plane service scales: no container_name, no fixed address, every
    # published host port is a range wide enough for --scale dataplane=5, and it
    # follows both control planes.
    dp = svcs[by_role["dataplane"][0]]
    check("container_name" not in dp, "dataplane has no container_name (it is scaled)")
    for net in (dp.get("networks") or {}).values():
        check(not (isinstance(net, dict) and net.get("ipv4_address")),
              "dataplane has no fixed address")
    ports = published(dp)
    targets = {t for _, _, t in ports}
    for t in ("9080", "9443", "1883"):
        check(t in targets, "data plane port %s published (%s)" % (t, sorted(targets)))
    for hip, pub, target in ports:
        m = re.match(r"^(\d+)-(\d+)$", pub)
        check(m and int(m.group(2)) - int(m.group(1)) + 1 >= 5,
              "dataplane port %s: host side %r must be a range of at least 5 ports" % (
                  target, pub))
    replicas = (dp.get("deploy") or {}).get("replicas")
    eq(replicas, 3, "dataplane replicas")
    argv = argv_of(dp)
    dconf = host_path(dp, argv[argv.index("-c") + 1])
    check(dconf and os.path.exists(dconf), "dataplane config mounted from the repository")
    dtext = text(dconf)
    for a in cp_addrs:
        check("%s:9280" % a in dtext, "the data plane follows control plane %s" % a)
    check(not re.search(r"^\s*node_id:", dtext, re.M), "no fixed node_id (replicas differ)")

    # Every airgw service builds from deploy/Dockerfile; every bind mount exists.
    for name, s in svcs.items():
        if name in by_role["controlplane"] + by_role["dataplane"]:
            b = s.get("build") or {}
            eq(os.path.realpath(os.path.join(b.get("context", ""), b.get("dockerfile", ""))),
               os.path.realpath(DOCKERFILE), "%s builds from deploy/Dockerfile" % name)
        for src in mounted_files(s):
            check(os.path.exists(src), "%s mounts %s, which does not exist" % (name, src))


def host_path(svc, container_path):
    """The host file behind a path in the container (through a bind mount)."""
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            src, dst = v.get("source"), v.get("target")
        else:
            parts = str(v).split(":")
            if len(parts) < 2:
                continue
            src, dst = parts[0], parts[1]
        if src and dst and (container_path == dst or container_path.startswith(dst + "/")):
            return src + container_path[len(dst):]
    return None


# ---------------------------------------------------------------------------
# the configs compose mounts start real daemons


def compose_conf(name):
    return text(os.path.join(DEPLOY, "compose", name))


def etcd_endpoints(path):
    """The etcd endpoints a control plane config names: deployment.etcd.host, or
    deployment.store "etcd:URL,..." ([] when it uses no etcd)."""
    import yaml
    dep = (yaml.safe_load(text(path)) or {}).get("deployment") or {}
    store = dep.get("store")
    if isinstance(store, str) and store.startswith("etcd:"):
        return store[5:].split(",")
    if store in (None, "etcd"):
        hosts = (dep.get("etcd") or {}).get("host") or []
        return [hosts] if isinstance(hosts, str) else list(hosts)
    return []


def test_compose_controlplane_config_starts_on_etcd(ctx):
    import yaml
    etcd = etcd_harness.new_etcd(ctx)
    tmp = new_tmpdir("compose-cp")
    conf = yaml.safe_load(compose_conf("controlplane.yaml"))
    dep = conf["deployment"]
    check(etcd_endpoints(os.path.join(DEPLOY, "compose", "controlplane.yaml")),
          "the compose control plane uses etcd")
    # Rewritten: the etcd endpoints (to the test's etcd), listen addresses (free
    # loopback ports) and paths; everything else as written. JSON is YAML.
    if "etcd" in dep:
        dep["etcd"]["host"] = [etcd.url]
    else:
        dep["store"] = "etcd:" + etcd.url
    admin, stream = free_port(), free_port()
    eq(dep["admin"]["admin_listen"], {"ip": "0.0.0.0", "port": 9180}, "admin_listen")
    dep["admin"]["admin_listen"] = {"ip": "127.0.0.1", "port": admin}
    eq(dep["config_stream"]["listen"], "0.0.0.0:9280", "config_stream.listen")
    dep["config_stream"]["listen"] = "127.0.0.1:%d" % stream
    dep["state_dir"] = dep["state_dir"].replace("/var/lib/airgw", tmp)
    cp = ctx.daemon(config=json.dumps(conf), listen=False, state_dir=None)
    check("unknown key" not in cp.stderr(), "no unknown key: %s" % cp.stderr()[-300:])
    r = cp.must("PUT", "routes/compose", {"uri": "/c", "upstream": {
        "type": "roundrobin", "nodes": {"upstream:80": 1}}})
    eq(r["key"], "/apisix/routes/compose", "key")
    got = etcd.client().get("/apisix/routes/compose")
    check(got is not None, "the route is in etcd under /apisix: %s" % (got,))


def test_compose_dataplane_config_starts(ctx):
    cp = ctx.shared()
    conf = compose_conf("dataplane.yaml")
    conf = conf.replace("/var/lib/airgw", new_tmpdir("compose-dp"))
    # The control plane list: a dead one first, then the running one (failover).
    addrs = re.findall(r"\b\d+\.\d+\.\d+\.\d+:9280\b", conf)
    eq(len(addrs), 2, "two control planes in the data plane's list")
    conf = conf.replace(addrs[0], "127.0.0.1:%d" % free_port())
    conf = conf.replace(addrs[1], "127.0.0.1:%d" % cp.config_port)
    conf = re.sub(r"\b0\.0\.0\.0:\d+\b", lambda m: "127.0.0.1:%d" % free_port(), conf)
    d = new_dp(ctx, cp=None, config=conf, workers=1)
    d.wait_log(r"stream \(tls\) listening on 127\.0\.0\.1:\d+", what="TLS stream listener")
    d.wait_log(r"https listening on 127\.0\.0\.1:\d+", what="https listener")
    check("unknown key" not in d.stderr(), "no unknown key in the compose data plane config")
    check(wait_until(lambda: d.node_id in json.dumps(cp.dataplanes()), T(10), interval=0.2),
          "the data plane reached the second control plane of its list")


def test_compose_mosquitto_config_starts(ctx):
    conf = compose_conf("mosquitto.conf")
    port = free_port()
    conf2 = re.sub(r"^listener 1883 0\.0\.0\.0$", "listener %d 127.0.0.1" % port, conf,
                   flags=re.M)
    check(conf2 != conf, "mosquitto.conf has `listener 1883 0.0.0.0`")
    path = os.path.join(new_tmpdir("compose-mosq"), "mosquitto.conf")
    with open(path, "w") as f:
        f.write(conf2)
    p = subprocess.Popen([mosquitto_bin(), "-c", path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from harness import port_open
        ok = wait_until(lambda: port_open(port) or p.poll() is not None, T(5))
        check(ok and p.poll() is None, "mosquitto with the compose config did not start")
        rc, out, err = ctx.run(["mosquitto_pub", "-p", str(port), "-t", "t", "-m", "x"])
        eq(rc, 0, "mosquitto_pub to the compose broker config (%s)" % err.strip())
    finally:
        p.terminate()
        p.wait(timeout=5)


# ---------------------------------------------------------------------------
# Dockerfile


def stages():
    """[(from_line, [instructions])] of the Dockerfile, continuation lines joined."""
    lines = re.sub(r"\\\n", " ", text(DOCKERFILE)).splitlines()
    out = []
    for ln in lines:
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        if ln.upper().startswith("FROM "):
            out.append((ln, []))
        else:
            check(out, "instruction before FROM: %s" % ln)
            out[-1][1].append(ln)
    return out


def apt_packages(instrs):
    pkgs = set()
    for i in instrs:
        if not i.upper().startswith("RUN "):
            continue
        for m in re.finditer(r"apt-get install ([^&;|]*)", i):
            pkgs |= {w for w in m.group(1).split() if not w.startswith("-")}
    return pkgs


def run_pkgs():
    m = re.search(r'^RUN_PKGS="([^"]*)"', text(os.path.join(ROOT, "airgw.sh")), re.M)
    check(m, "RUN_PKGS in airgw.sh")
    return set(m.group(1).split())


def test_dockerfile_lint(ctx):
    need("dockerfile-utils", "npm package dockerfile-utils")
    rc, out, err = ctx.run(["dockerfile-utils", "lint", "--json", DOCKERFILE], timeout=30)
    try:
        problems = json.loads(out)
    except ValueError:
        raise Fail("dockerfile-utils gave no JSON (exit %d): %s %s" % (rc, out[:300], err[:300]))
    check(problems == [], "dockerfile-utils lint: %s" % json.dumps(problems)[:800])
    eq(rc, 0, "dockerfile-utils exit code")
    # The linter is alive: it reports a broken Dockerfile.
    bad = os.path.join(ctx.tmpdir(), "Dockerfile")
    with open(bad, "w") as f:
        f.write("FROM debian:12-slim\nEXPOSE 9180\nCMD [\"a\"]\nCMD [\"b\"]\nBOGUS x\n")
    rc, out, _ = ctx.run(["dockerfile-utils", "lint", "--json", bad], timeout=30)
    check(rc != 0 and len(json.loads(out)) >= 2, "the linter flags a broken Dockerfile: %s" % out)


def test_dockerfile_stages(ctx):
    st = stages()
    check(len(st) >= 2, "multi-stage: %d FROM" % len(st))
    first, last = st[0], st[-1]
    check(re.match(r"FROM debian:12\s+AS\s+\w+", first[0], re.I),
          "build stage from debian:12: %s" % first[0])
    check(re.match(r"FROM debian:12-slim(\s|$)", last[0], re.I),
          "runtime stage from debian:12-slim: %s" % last[0])
    eq(apt_packages(first[1]), run_pkgs(), "build stage packages vs airgw.sh RUN_PKGS")
    rt = apt_packages(last[1])
    dev = sorted(p for p in rt if p.endswith("-dev") or p in BUILD_TOOLS)
    check(not dev, "build tools in the runtime stage: %s" % dev)
    check(any(re.match(r"COPY --from=\w+", i) for i in last[1]),
          "the runtime stage copies the binaries from the build stage")
    users = [i.split(None, 1)[1] for i in last[1] if i.upper().startswith("USER ")]
    check(users, "a USER in the runtime stage")
    check(users[-1].split(":")[0] not in ("root", "0"), "final USER is not root: %s" % users[-1])
    check(any(i.upper().startswith("HEALTHCHECK ") for i in last[1]), "a HEALTHCHECK")
    exposed = set()
    for i in last[1]:
        if i.upper().startswith("EXPOSE "):
            exposed |= {p.split("/")[0] for p in i.split()[1:]}
    for p in ("9180", "9280", "9080", "9443", "1883", "8883", "9091"):
        check(p in exposed, "EXPOSE %s (%s)" % (p, sorted(exposed)))
    # Every file COPY takes from the context exists.
    for _, instrs in st:
        for i in instrs:
            if i.upper().startswith("COPY ") and "--from=" not in i:
                for src in i.split()[1:-1]:
                    check(os.path.exists(os.path.join(ROOT, src)), "COPY source %s" % src)


def test_dockerfile_build_stage_sources_configure(ctx):
    """What the build stage COPYs is enough for meson: the sources are put where
    the Dockerfile puts them, `meson setup` as its RUN does, and the ninja
    targets the RUN names exist (no compile: the gcc build covers that)."""
    first = stages()[0][1]
    workdir = [i.split()[1] for i in first if i.upper().startswith("WORKDIR ")]
    check(workdir, "the build stage has a WORKDIR")
    src = os.path.join(ctx.tmpdir(), "src")
    os.makedirs(src)
    for i in first:
        if not i.upper().startswith("COPY "):
            continue
        args = i.split()[1:]
        dst = args[-1]
        dst = dst if dst.startswith("/") else os.path.join(workdir[-1], dst)
        check(dst.rstrip("/").startswith(workdir[-1]), "COPY into %s" % workdir[-1])
        rel = os.path.relpath(dst, workdir[-1])
        for a in args[:-1]:
            here = os.path.join(ROOT, a)
            target = os.path.join(src, rel)
            if os.path.isdir(here):
                shutil.copytree(here, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                os.makedirs(target, exist_ok=True)
                shutil.copy(here, target)
    run = [i for i in first if "meson setup" in i]
    check(len(run) == 1, "one RUN with meson setup in the build stage")
    m = re.search(r"meson setup (\S+) (\S+)((?: -\S+)*)", run[0])
    check(m and m.group(2) == workdir[-1], "meson setup of %s: %s" % (workdir[-1], run[0]))
    build = os.path.join(ctx.tmpdir(), "build")
    rc, out, err = ctx.run(["meson", "setup", build, src] + m.group(3).split(), timeout=60)
    eq(rc, 0, "meson setup on the build stage's sources (%s)" % (err or out)[-600:])
    targets = re.search(r"ninja -C \S+ ([^&]+)", run[0]).group(1).split()
    rc, out, err = ctx.run(["ninja", "-C", build, "-t", "targets", "all"], timeout=30)
    known = {ln.split(":")[0] for ln in out.splitlines()}
    for t in targets:
        check(t in known, "ninja target %s exists" % t)


def test_dockerfile_runtime_has_every_library_the_binaries_load(ctx):
    """NEEDED libraries of the built daemons -> their Debian packages, each
    installed by the runtime stage (or already in debian:12-slim)."""
    rt = apt_packages(stages()[-1][1])
    needed = {}  # resolved path -> (lib, binary)
    for b in (Settings.cp_bin(), dp_bin()):
        rc, out, err = ctx.run(["ldd", b])
        eq(rc, 0, "ldd %s" % b)
        direct = set(re.findall(r"\(NEEDED\).*\[(.+)\]", subprocess.run(
            ["readelf", "-d", b], stdout=subprocess.PIPE).stdout.decode(errors="replace")))
        check(direct, "readelf -d %s lists NEEDED libraries" % b)
        for m in re.finditer(r"^\s*(\S+) => (/\S+)", out, re.M):
            lib, path = m.group(1), m.group(2)
            # Sanitizer runtimes (build-san only); transitive libraries come with
            # the packages of the direct ones.
            if lib in direct and not lib.startswith(("libasan", "libubsan", "libclang_rt")):
                needed[path] = (lib, os.path.basename(b))
    # dpkg knows a file by the path its package installed (/lib/... or /usr/lib/...,
    # before or after the symlink): ask for both.
    paths = sorted(set(needed) | {os.path.realpath(p) for p in needed})
    rc, out, err = ctx.run(["dpkg", "-S"] + paths, timeout=30)
    owner = {}
    for ln in out.splitlines():
        pkgs, _, path = ln.partition(": ")
        owner[path.strip()] = pkgs.split(",")[0].split(":")[0].strip()
    missing = []
    for path, (lib, binary) in sorted(needed.items()):
        pkg = owner.get(path) or owner.get(os.path.realpath(path))
        check(pkg, "no Debian package owns %s (%s)" % (path, err.strip()))
        if pkg not in rt and pkg not in SLIM_BASE:
            missing.append("%s (%s, %s)" % (pkg, lib, binary))
    check(not missing, "the runtime stage lacks %s" % ", ".join(sorted(set(missing))))


# ---------------------------------------------------------------------------
# systemd units

UNITS = {"airgw-controlplane.service": "airgw-controlplane",
         "airgw-dataplane.service": "airgw-dataplane"}


def unit_keys(path):
    keys = {}
    section = None
    for ln in text(path).splitlines():
        ln = ln.strip()
        if not ln or ln.startswith(("#", ";")):
            continue
        if ln.startswith("["):
            section = ln.strip("[]")
            continue
        k, _, v = ln.partition("=")
        keys.setdefault((section, k.strip()), []).append(v.strip())
    return keys


def test_systemd_units_verify(ctx):
    need("systemd-analyze", "Debian package systemd")
    tmp = ctx.tmpdir()
    bins = {"airgw-controlplane": Settings.cp_bin(), "airgw-dataplane": dp_bin()}
    paths = []
    for unit in UNITS:
        t = text(os.path.join(DEPLOY, "systemd", unit))
        # Point ExecStart at the built binaries so verify can check they execute.
        for name, b in bins.items():
            t = t.replace("/usr/local/bin/" + name, b)
        p = os.path.join(tmp, unit)
        with open(p, "w") as f:
            f.write(t)
        paths.append(p)
    rc, out, err = ctx.run(["systemd-analyze", "verify"] + paths, timeout=30)
    eq(rc, 0, "systemd-analyze verify exit code (%s)" % err.strip())
    check(err.strip() == "", "systemd-analyze verify warnings: %s" % err.strip())
    # And it does catch a mistake (a misspelt key is a warning on stderr).
    with open(paths[0]) as f:
        broken = f.read().replace("Restart=on-failure", "Restrat=on-failure")
    with open(paths[0], "w") as f:
        f.write(broken)
    rc, out, err = ctx.run(["systemd-analyze", "verify", paths[0]], timeout=30)
    check("Restrat" in err, "systemd-analyze reports an unknown key: %s" % err.strip())


def test_systemd_units_keys_and_configs(ctx):
    for unit, daemon in UNITS.items():
        k = unit_keys(os.path.join(DEPLOY, "systemd", unit))
        svc = lambda key: k.get(("Service", key), [])  # noqa: E731
        check(svc("User") == ["airgw"] or svc("DynamicUser") == ["yes"],
              "%s: runs as airgw or a dynamic user" % unit)
        eq(svc("Restart"), ["on-failure"], "%s Restart" % unit)
        check(svc("StateDirectory"), "%s: StateDirectory" % unit)
        check(svc("LimitNOFILE") and int(svc("LimitNOFILE")[0]) >= 65536,
              "%s: LimitNOFILE >= 65536" % unit)
        eq(svc("NoNewPrivileges"), ["yes"], "%s NoNewPrivileges" % unit)
        eq(svc("ProtectSystem"), ["strict"], "%s ProtectSystem" % unit)
        eq(k.get(("Install", "WantedBy")), ["multi-user.target"], "%s WantedBy" % unit)
        argv = shlex.split(svc("ExecStart")[0])
        eq(argv[0], "/usr/local/bin/" + daemon, "%s ExecStart binary" % unit)
        # The config it reads is a sample in deploy/ (docs/operations.md: copy it).
        conf = argv[argv.index("-c") + 1]
        check(conf.startswith("/etc/airgw/"), "%s reads /etc/airgw/: %s" % (unit, conf))
        check(os.path.exists(os.path.join(DEPLOY, os.path.basename(conf))),
              "%s: deploy/%s exists" % (unit, os.path.basename(conf)))
        # Its state dir is the StateDirectory systemd makes.
        sd = argv[argv.index("--state-dir") + 1]
        dirs = " ".join(svc("StateDirectory")).split()
        check(sd.startswith("/var/lib/") and sd[len("/var/lib/"):] in dirs,
              "%s: --state-dir %s is a StateDirectory (%s)" % (unit, sd, dirs))
    dk = unit_keys(os.path.join(DEPLOY, "systemd", "airgw-dataplane.service"))
    reload_ = dk.get(("Service", "ExecReload"), [""])[0]
    check(re.match(r"^/bin/kill -HUP \$MAINPID$", reload_), "data plane reload: %r" % reload_)
    eq(dk.get(("Service", "KillMode")), ["mixed"], "data plane KillMode (the master drains)")
    users = text(os.path.join(DEPLOY, "systemd", "airgw.sysusers.conf"))
    check(re.search(r"^u airgw ", users, re.M), "sysusers.d entry for the airgw user")
