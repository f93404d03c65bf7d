"""A burst of configuration changes through the Admin API: the data plane
ends on the last revision and serves what the last changes wrote (not an
intermediate revision), every worker included; a SIGTERM in the middle of a
burst stops the data plane cleanly within the harness's normal bound. No
timing is asserted (workers fold many changes into one compile when
compiling costs time, see dataplane/cfg_state.h; how many they fold is not
a user-visible property)."""

import http.client
import json
import re
import signal
import threading

from harness import T, check, eq, uid, wait_until
from dp_harness import curl_many, dp_env, new_dp, wait_serving

WORKER_REV_RE = re.compile(r"\[worker (\d+)\] serving revision (\d+)")


def env_of(ctx):
    return dp_env(ctx, "burst", dps=0, upstreams=("a",))


class Admin:
    """Keep-alive Admin API client for bursts (one PUT after another, as a
    provisioning script would send them)."""

    def __init__(self, cp):
        self.conn = http.client.HTTPConnection("127.0.0.1", cp.admin_port, timeout=T(30))
        self.hdr = {"X-API-KEY": cp.key, "Content-Type": "application/json"}

    def put(self, path, body):
        self.conn.request("PUT", "/apisix/admin/" + path, json.dumps(body), self.hdr)
        r = self.conn.getresponse()
        data = r.read()
        check(r.status in (200, 201), "PUT %s: %d %s" % (path, r.status, data[:300]))
        return json.loads(data)

    def close(self):
        self.conn.close()


def burst(adm, tag, up_addr, n, mover_every=10, on_put=None):
    """n PUTs: upstreams <tag>-u<i> for the first fifth, then routes
    <tag>-r<i> on /<tag>/r<i> naming them; every mover_every-th PUT also
    moves route <tag>-mover to /<tag>/mover/<i>. Returns (last revision,
    the mover's last uri, the last route's uri)."""
    nup = max(1, n // 5)
    rev, mover, last = 0, None, None
    for i in range(n):
        if i < nup:
            j = adm.put("upstreams/%s-u%d" % (tag, i),
                        {"type": "roundrobin", "nodes": {up_addr: 1}})
        else:
            last = "/%s/r%d" % (tag, i)
            j = adm.put("routes/%s-r%d" % (tag, i),
                        {"uri": last, "upstream_id": "%s-u%d" % (tag, i % nup)})
        rev = max(rev, j["modifiedIndex"])
        if i % mover_every == mover_every - 1:
            mover = "/%s/mover/%d" % (tag, i)
            j = adm.put("routes/%s-mover" % tag, {"uri": mover, "upstream_id": "%s-u0" % tag})
            rev = max(rev, j["modifiedIndex"])
        if on_put:
            on_put(i)
    return rev, mover, last


def acked_at_least(cp, d, rev):
    """The control plane lists d's master as having ACKed rev or later."""
    return any(n.get("node_id") == d.node_id and n.get("revision", 0) >= rev
               for n in cp.dataplanes().get("list", []))


def worker_revisions(d):
    """Worker slot -> the highest revision it logged serving (debug log)."""
    out = {}
    for slot, rev in WORKER_REV_RE.findall(d.stderr()):
        out[int(slot)] = max(out.get(int(slot), 0), int(rev))
    return out


def test_dp_burst_of_500_puts_converges_to_the_last_revision(ctx):
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="burst", workers=2, log_level="debug")
    tag = uid("bu")
    adm = Admin(env.cp)
    try:
        rev, mover, last = burst(adm, tag, env.ups["a"].addr, 500)
    finally:
        adm.close()
    # Every worker compiles the last revision (and ACKs it; the master
    # relays nothing newer).
    ok = wait_until(lambda: all(r >= rev for r in worker_revisions(d).values())
                    and len(worker_revisions(d)) == 2, T(30))
    check(ok, "workers did not reach revision %d: %s; log tail:\n%s" % (
        rev, worker_revisions(d), "\n".join(d.tail(10))))
    eq(max(worker_revisions(d).values()), rev, "the highest revision a worker serves")
    # What a user sees: the last route and the mover's last place answer on
    # fresh connections (both workers), its earlier places do not.
    wait_serving(d, last, timeout=10)
    wait_serving(d, mover, timeout=10)
    res = curl_many([d.url(last)] * 8 + [d.url(mover)] * 8, close=True)
    eq([s for s, _ in res], [200] * 16, "statuses of the last route and the mover, 8 each")
    first_mover = "/%s/mover/9" % tag
    check(first_mover != mover, "the mover moved more than once")
    res = curl_many([d.url(first_mover)] * 8, close=True)
    eq([s for s, _ in res], [404] * 8, "statuses of the mover's first, left, uri")
    # The burst's routes all compiled: a sample across it.
    nup = 100
    sample = ["/%s/r%d" % (tag, i) for i in (nup, nup + 1, 250, 377, 498)]
    res = curl_many([d.url(p) for p in sample], close=True)
    eq([s for s, _ in res], [200] * len(sample), "statuses of routes from the burst")
    # The master's own view, as the control plane lists it.
    check(wait_until(lambda: acked_at_least(env.cp, d, rev), T(10)),
          "the control plane does not list %s at revision %d: %s"
          % (d.node_id, rev, env.cp.dataplanes()))
    check(not d.unexpected_deaths(), "no worker died: %s" % d.unexpected_deaths())


def test_dp_sigterm_during_a_burst_exits_cleanly(ctx):
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="burststop", workers=2)
    wait_serving(d, "/nothing-here", pred=lambda r: r.status == 404)
    tag = uid("bs")
    adm = Admin(env.cp)
    halfway = threading.Event()
    done = []

    def run():
        try:
            done.append(burst(adm, tag, env.ups["a"].addr, 500,
                              on_put=lambda i: i == 250 and halfway.set()))
        except BaseException as ex:  # noqa: BLE001
            done.append(ex)
        halfway.set()
    th = threading.Thread(target=run)
    th.start()
    try:
        check(halfway.wait(T(60)), "the burst did not reach its middle")
        # DataPlane.stop: SIGTERM, exit 0 within the harness's bound (15 s),
        # no worker left behind, no sanitizer report, no worker that died.
        d.stop()
    finally:
        th.join(T(120))
        adm.close()
    check(done and not isinstance(done[0], BaseException),
          "the control plane kept taking the burst's writes: %s" % (done[:1],))
    # Started again, it catches up with the whole burst.
    d.start()
    rev, mover, last = done[0]
    wait_serving(d, last, timeout=10)
    wait_serving(d, mover, timeout=10)
    check(wait_until(lambda: acked_at_least(env.cp, d, rev), T(10)),
          "the restarted data plane does not reach revision %d: %s"
          % (rev, env.cp.dataplanes()))


SERVING_RE = re.compile(r"worker \d+ \(pid (\d+)\) serving revision")


def test_dp_sighup_during_a_burst_replaces_workers_before_it_ends(ctx):
    """A reload in the middle of a burst: the new workers take over while the
    changes keep coming (they serve once they compiled what they were sent,
    not only once they caught up with a revision that keeps moving)."""
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="bursthup", workers=2)
    wait_serving(d, "/nothing-here", pred=lambda r: r.status == 404)
    old = set(d.workers().values())
    tag = uid("bh")
    adm = Admin(env.cp)
    stop = threading.Event()
    started = threading.Event()
    done = []

    class Stopped(Exception):
        pass

    def on_put(i):
        if i == 100:
            started.set()
        if stop.is_set():
            raise Stopped()

    def run():
        try:
            done.append(burst(adm, tag, env.ups["a"].addr, 3000, on_put=on_put))
        except Stopped:
            done.append("stopped")
        except BaseException as ex:  # noqa: BLE001
            done.append(ex)
        started.set()
    th = threading.Thread(target=run)
    th.start()
    try:
        check(started.wait(T(60)), "the burst did not start")
        mark = d.log_mark()
        d.proc.send_signal(signal.SIGHUP)

        def new_serving():
            pids = {int(p) for p in SERVING_RE.findall(d.stderr()[mark:])}
            return len(pids - old) >= 2
        ok = wait_until(new_serving, T(20))
        still_running = th.is_alive()
    finally:
        stop.set()
        th.join(T(120))
        adm.close()
    check(ok, "the new workers did not serve within 20 s of SIGHUP; log tail:\n%s"
          % "\n".join(d.tail(12)))
    check(still_running, "the burst ended before the new workers served: the test proved "
                         "nothing (make the burst longer)")
    check(done and not isinstance(done[0], BaseException), "burst: %s" % (done[:1],))
    check(wait_until(lambda: not (set(d.workers().values()) & old), T(10)),
          "the old workers were not retired: %s (old %s)" % (d.workers(), old))
