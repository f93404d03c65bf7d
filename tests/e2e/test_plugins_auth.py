"""The authentication and address plugins end to end: key-auth, basic-auth
and ip-restriction (HTTP routes, global rules, IPv4 and IPv6, stream routes)
with a real control plane, a real data plane (two workers), real upstreams
(upstream_server.py echoes what it received) and the real curl.

- key-auth: key in the header and in the query, 401 bodies for a missing
  and an unknown key (nothing reaches the upstream), custom header/query
  names, hide_credentials checked on what the upstream received, consumer
  changes applied live (new key, deleted consumer), the consumer attached
  to the request (X-Consumer-Username upstream, $consumer_name in
  proxy-rewrite, chash hash_on consumer);
- basic-auth: curl -u, 401 bodies and WWW-Authenticate, wrong password,
  malformed header, hide_credentials, a password change applied live;
- ip-restriction: whitelist and blacklist with addresses and CIDRs from
  127.0.0.0/8 (curl --interface), custom message and code, IPv6 through a
  data plane listening on [::1], on a global rule (also before the 404),
  and its phase after the auth plugins' rewrite phase;
- ip-restriction on stream routes: MQTT (CONNACK "not authorized") and
  plain TCP (closed);
- the Admin API refuses bad configurations of these plugins."""

import base64
import socket

from harness import Fail, T, check, curl, eq, expect_status, uid, wait_until
from dp_harness import dp_env, new_dp, new_upstream, wait_serving
from mqtt_harness import (connect_packet, exchange, mqtt_dp, new_broker, parse_connack, probe,
                          wait_probe)

DENIED = {"message": "Your IP address is not allowed"}


def env_of(ctx):
    return dp_env(ctx, "auth", dps=1, workers=2, upstreams=("a", "b"))


def dp_of(env):
    return env.dps[0]


def echo(r, what):
    """The upstream's echo of a request that must have passed."""
    if r.status != 200:
        raise Fail("%s: %s: expected 200 from the upstream, got %d: %s" % (
            r.where(), what, r.status, r.text[:300]))
    return r.j


def expect_message(r, status, message, what):
    expect_status(r, status)
    eq(r.j, {"message": message}, "%s: body" % what)
    check(r.headers.get("content-type", "").startswith("application/json"),
          "%s: Content-Type %r, expected application/json" % (what, r.headers.get(
              "content-type")))


def consumer(env, name, plugins):
    env.put("consumers", {"username": name, "plugins": plugins})


def upstream_count(env, name, path):
    return env.ups[name].stats()["paths"].get(path, 0)


# ---------------------------------------------------------------------------
# key-auth


def test_key_auth_header_and_query(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("ka")
    key = "key-" + t
    consumer(env, t.replace("-", "_"), {"key-auth": {"key": key}})
    env.route(t, {"uri": "/%s/*" % t, "plugins": {"key-auth": {}}, "upstream": env.up("a")})
    wait_serving(env.dps, "/%s/x" % t, headers=["apikey: " + key])

    name = t.replace("-", "_")
    j = echo(d.get("/%s/h" % t, headers=["apikey: " + key]), "key in the header")
    eq(j["headers"].get("apikey"), key, "apikey header passed upstream (hide_credentials off)")
    eq(j["headers"].get("x-consumer-username"), name, "X-Consumer-Username upstream")
    # A client cannot pose as another consumer.
    j = echo(d.get("/%s/h" % t, headers=["apikey: " + key, "X-Consumer-Username: admin"]),
             "key with a forged X-Consumer-Username")
    eq(j["headers"].get("x-consumer-username"), name, "X-Consumer-Username upstream (forged)")
    j = echo(d.get("/%s/q?a=1&apikey=%s" % (t, key)), "key in the query")
    eq(j["target"], "/%s/q?a=1&apikey=%s" % (t, key), "target upstream (query kept)")

    before = upstream_count(env, "a", "/%s/no" % t)
    expect_message(d.get("/%s/no" % t), 401, "Missing API key in request", "no key")
    expect_message(d.get("/%s/no" % t, headers=["apikey: wrong-" + key]), 401,
                   "Invalid API key in request", "unknown key in the header")
    expect_message(d.get("/%s/no?apikey=wrong" % t), 401, "Invalid API key in request",
                   "unknown key in the query")
    # The header is looked at first: a wrong header is not saved by a right query.
    expect_message(d.get("/%s/no?apikey=%s" % (t, key), headers=["apikey: nope"]), 401,
                   "Invalid API key in request", "wrong header, right query")
    # (curl sends "Name;" as an empty header; "Name:" would drop it.)
    expect_message(d.get("/%s/no" % t, headers=["apikey;"]), 401,
                   "Invalid API key in request", "empty key")
    eq(upstream_count(env, "a", "/%s/no" % t), before, "refused requests reaching the upstream")


def test_key_auth_custom_names_and_hide_credentials(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("kh")
    key = "key+/%s" % t  # '+' and '/' travel %-encoded in the query
    consumer(env, t.replace("-", "_"), {"key-auth": {"key": key}})
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up("a"),
                  "plugins": {"key-auth": {"header": "X-Device-Key", "query": "token",
                                           "hide_credentials": True}}})
    wait_serving(env.dps, "/%s/x" % t, headers=["X-Device-Key: " + key])

    j = echo(d.get("/%s/h?keep=1" % t, headers=["X-Device-Key: " + key, "X-Other: 1"]),
             "key in the custom header")
    check("x-device-key" not in j["headers"],
          "hidden key header reached the upstream: %s" % j["headers"])
    eq(j["headers"].get("x-other"), "1", "other header upstream")
    eq(j["target"], "/%s/h?keep=1" % t, "target upstream")

    enc = key.replace("+", "%2B").replace("/", "%2F")
    j = echo(d.get("/%s/q?a=1&token=%s&b=2" % (t, enc)), "key in the custom query argument")
    eq(j["target"], "/%s/q?a=1&b=2" % t, "target upstream with the key argument removed")
    j = echo(d.get("/%s/q?token=%s" % (t, enc)), "key as the only argument")
    check(j["target"] in ("/%s/q" % t, "/%s/q?" % t),
          "target upstream with its only argument removed: %r" % j["target"])

    # The default names mean nothing on this route.
    expect_message(d.get("/%s/d?apikey=%s" % (t, enc), headers=["apikey: " + key]), 401,
                   "Missing API key in request", "default names on a custom route")


def test_key_auth_consumer_changes_live(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("kl")
    name = t.replace("-", "_")
    consumer(env, name, {"key-auth": {"key": "old-" + t}})
    env.route(t, {"uri": "/%s" % t, "plugins": {"key-auth": {}}, "upstream": env.up("a")})
    wait_serving(env.dps, "/%s" % t, headers=["apikey: old-" + t])

    consumer(env, name, {"key-auth": {"key": "new-" + t}})
    wait_serving(env.dps, "/%s" % t, headers=["apikey: new-" + t], what="new key accepted")
    expect_message(d.get("/%s" % t, headers=["apikey: old-" + t]), 401,
                   "Invalid API key in request", "old key after the change")

    env.delete("consumers/" + name)
    wait_serving(env.dps, "/%s" % t, headers=["apikey: new-" + t],
                 pred=lambda r: r.status == 401, what="401 after the consumer was deleted")
    expect_message(d.get("/%s" % t, headers=["apikey: new-" + t]), 401,
                   "Invalid API key in request", "key of a deleted consumer")


def test_consumer_name_variable(ctx):
    """$consumer_name after key-auth, seen by proxy-rewrite (a later plugin
    of the rewrite phase) and sent upstream in a header of its own."""
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("kv")
    name = t.replace("-", "_")
    consumer(env, name, {"key-auth": {"key": "key-" + t}})
    env.route(t, {"uri": "/%s" % t, "upstream": env.up("a"), "plugins": {
        "key-auth": {}, "proxy-rewrite": {"headers": {"set": {"X-Who": "$consumer_name"}}}}})
    wait_serving(env.dps, "/%s" % t, headers=["apikey: key-" + t])
    j = echo(d.get("/%s" % t, headers=["apikey: key-" + t]), "key-auth + proxy-rewrite")
    eq(j["headers"].get("x-who"), name, "$consumer_name upstream")


def test_key_auth_consumer_drives_chash(ctx):
    """The consumer is attached to the request: an upstream with chash
    hash_on consumer sends each consumer to one node, always the same, and
    different consumers to both nodes."""
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("kc")
    names = ["%s_%d" % (t.replace("-", "_"), i) for i in range(12)]
    for n in names:
        consumer(env, n, {"key-auth": {"key": "k-" + n}})
    env.route(t, {"uri": "/%s" % t, "plugins": {"key-auth": {}},
                  "upstream": {"type": "chash", "hash_on": "consumer",
                               "nodes": {env.ups["a"].addr: 1, env.ups["b"].addr: 1}}})
    wait_serving(env.dps, "/%s" % t, headers=["apikey: k-" + names[-1]])
    seen = {}
    for n in names:
        servers = {echo(d.get("/%s" % t, headers=["apikey: k-" + n]), n)["server"]
                   for _ in range(4)}
        eq(len(servers), 1, "upstreams of consumer %s (one expected): %s" % (n, servers))
        seen[n] = servers.pop()
    eq(sorted(set(seen.values())), ["a", "b"], "nodes used by 12 consumers")


# ---------------------------------------------------------------------------
# basic-auth


def basic(user, password):
    return "Authorization: Basic " + base64.b64encode(
        ("%s:%s" % (user, password)).encode()).decode()


def test_basic_auth(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("ba")
    name = t.replace("-", "_")
    pw = "s3cret: with colon"
    consumer(env, name, {"basic-auth": {"username": "user-" + t, "password": pw}})
    env.route(t, {"uri": "/%s/*" % t, "plugins": {"basic-auth": {}}, "upstream": env.up("a")})
    wait_serving(env.dps, "/%s/x" % t, headers=[basic("user-" + t, pw)])

    j = echo(d.get("/%s/u" % t, extra=["-u", "user-%s:%s" % (t, pw)]), "curl -u")
    check(j["headers"].get("authorization", "").startswith("Basic "),
          "Authorization passed upstream (hide_credentials off): %s" % j["headers"])
    eq(j["headers"].get("x-consumer-username"), name, "X-Consumer-Username upstream")

    before = upstream_count(env, "a", "/%s/no" % t)
    r = d.get("/%s/no" % t)
    expect_message(r, 401, "Missing authorization in request", "no Authorization")
    eq(r.headers.get("www-authenticate"), 'Basic realm="basic"', "WWW-Authenticate")
    r = d.get("/%s/no" % t, headers=[basic("user-" + t, "wrong")])
    expect_message(r, 401, "Invalid user authorization", "wrong password")
    eq(r.headers.get("www-authenticate"), 'Basic realm="basic"', "WWW-Authenticate")
    expect_message(d.get("/%s/no" % t, headers=[basic("nobody-" + t, pw)]), 401,
                   "Invalid user authorization", "unknown user")
    expect_message(d.get("/%s/no" % t, headers=["Authorization: Bearer abc"]), 401,
                   "Invalid authorization in request", "not Basic")
    expect_message(d.get("/%s/no" % t, headers=["Authorization: Basic %%%%"]), 401,
                   "Invalid authorization in request", "not base64")
    expect_message(d.get("/%s/no" % t, headers=["Authorization: Basic " + base64.b64encode(
        b"no-colon").decode()]), 401, "Invalid authorization in request", "no colon")
    eq(upstream_count(env, "a", "/%s/no" % t), before, "refused requests reaching the upstream")

    # A password change applies live.
    consumer(env, name, {"basic-auth": {"username": "user-" + t, "password": "other"}})
    wait_serving(env.dps, "/%s/x" % t, headers=[basic("user-" + t, "other")],
                 what="new password accepted")
    expect_message(d.get("/%s/x" % t, headers=[basic("user-" + t, pw)]), 401,
                   "Invalid user authorization", "old password after the change")


def test_basic_auth_hide_credentials(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("bh")
    consumer(env, t.replace("-", "_"), {"basic-auth": {"username": "u-" + t, "password": "p"}})
    env.route(t, {"uri": "/%s" % t, "plugins": {"basic-auth": {"hide_credentials": True}},
                  "upstream": env.up("b")})
    wait_serving(env.dps, "/%s" % t, headers=[basic("u-" + t, "p")])
    j = echo(d.get("/%s" % t, headers=[basic("u-" + t, "p"), "X-Keep: yes"]), "basic-auth")
    check("authorization" not in j["headers"],
          "hidden Authorization reached the upstream: %s" % j["headers"])
    eq(j["headers"].get("x-keep"), "yes", "other header upstream")


# ---------------------------------------------------------------------------
# ip-restriction (HTTP)


def test_ip_restriction_whitelist_and_blacklist(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("ip")
    env.route(t + "-w", {"uri": "/%s/w" % t, "upstream": env.up("a"), "plugins": {
        "ip-restriction": {"whitelist": ["127.0.0.1", "127.0.0.8/30"]}}})
    env.route(t + "-b", {"uri": "/%s/b" % t, "upstream": env.up("a"), "plugins": {
        "ip-restriction": {"blacklist": ["127.0.0.2", "127.0.1.0/24"],
                           "message": "blocked here", "response_code": 404}}})
    wait_serving(env.dps, "/%s/w" % t)
    wait_serving(env.dps, "/%s/b" % t)
    wait_serving(env.dps, "/%s/w" % t, interface="127.0.0.3", pred=lambda r: r.status == 403,
                 what="403 for 127.0.0.3")

    for ip in ("127.0.0.1", "127.0.0.8", "127.0.0.11"):
        j = echo(d.get("/%s/w" % t, interface=ip), "whitelisted %s" % ip)
        eq(j["headers"].get("x-forwarded-for"), ip, "client address upstream")
    for ip in ("127.0.0.2", "127.0.0.7", "127.0.0.12", "127.0.1.1"):
        expect_message(d.get("/%s/w" % t, interface=ip), 403, DENIED["message"],
                       "not whitelisted %s" % ip)

    for ip in ("127.0.0.2", "127.0.1.0", "127.0.1.255"):
        expect_message(d.get("/%s/b" % t, interface=ip), 404, "blocked here",
                       "blacklisted %s" % ip)
    for ip in ("127.0.0.1", "127.0.0.3", "127.0.2.1"):
        echo(d.get("/%s/b" % t, interface=ip), "not blacklisted %s" % ip)


def test_ip_restriction_runs_after_auth(ctx):
    """ip-restriction (access phase) runs after the auth plugins (rewrite
    phase), as in APISIX: a blacklisted client without a key hears 401, with
    a key 403."""
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("ia")
    key = "key-" + t
    consumer(env, t.replace("-", "_"), {"key-auth": {"key": key}})
    env.route(t, {"uri": "/%s" % t, "upstream": env.up("a"), "plugins": {
        "key-auth": {}, "ip-restriction": {"blacklist": ["127.0.0.4"]}}})
    wait_serving(env.dps, "/%s" % t, headers=["apikey: " + key])
    expect_message(d.get("/%s" % t, interface="127.0.0.4"), 401, "Missing API key in request",
                   "blacklisted client without key")
    expect_message(d.get("/%s" % t, interface="127.0.0.4", headers=["apikey: " + key]), 403,
                   DENIED["message"], "blacklisted client with a key")
    echo(d.get("/%s" % t, interface="127.0.0.5", headers=["apikey: " + key]), "other client")


def test_ip_restriction_global_rule(ctx):
    """On a global rule the list covers every route, and a request that
    matches no route (APISIX 3.x runs global rules before the 404)."""
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("ig")
    env.route(t, {"uri": "/%s" % t, "upstream": env.up("a")})
    wait_serving(env.dps, "/%s" % t)
    env.put("global_rules/" + t, {"plugins": {"ip-restriction": {"blacklist": ["127.0.0.6"]}}})
    try:
        wait_serving(env.dps, "/%s" % t, interface="127.0.0.6", pred=lambda r: r.status == 403,
                     what="global rule in effect")
        expect_message(d.get("/%s" % t, interface="127.0.0.6"), 403, DENIED["message"],
                       "route, blacklisted client")
        expect_message(d.get("/%s/nowhere" % t, interface="127.0.0.6"), 403, DENIED["message"],
                       "no route, blacklisted client")
        echo(d.get("/%s" % t, interface="127.0.0.1"), "route, other client")
        eq(d.get("/%s/nowhere" % t, interface="127.0.0.1").status, 404,
           "no route, other client")
    finally:
        env.delete("global_rules/" + t)
    wait_serving(env.dps, "/%s" % t, interface="127.0.0.6", what="global rule removed")


def free_port6():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(("::1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_ip_restriction_ipv6(ctx):
    """A data plane listening on [::1] too: IPv6 entries hold ::1, IPv4
    entries do not, and the reverse on the IPv4 listener."""
    env = env_of(ctx)
    p6 = free_port6()
    d = new_dp(ctx, env.cp, name="auth-v6", workers=1,
               args=["--http-listen", "[::1]:%d" % p6])
    d.wait_log(r"http listening on \[::1\]:%d" % p6, what="IPv6 listener")
    t = uid("i6")
    env.route(t + "-w", {"uri": "/%s/w" % t, "upstream": env.up("a"), "plugins": {
        "ip-restriction": {"whitelist": ["::1"]}}})
    env.route(t + "-c", {"uri": "/%s/c" % t, "upstream": env.up("a"), "plugins": {
        "ip-restriction": {"whitelist": ["127.0.0.1", "::/127"]}}})
    env.route(t + "-b", {"uri": "/%s/b" % t, "upstream": env.up("a"), "plugins": {
        "ip-restriction": {"blacklist": ["0:0:0:0:0:0:0:1/128"]}}})
    v6 = "http://[::1]:%d" % p6

    def get6(path):
        return curl("GET", v6 + path, ctype=None, timeout=T(5))

    wait_until(lambda: get6("/%s/w" % t).status == 200, T(3))
    echo(get6("/%s/w" % t), "::1 on a whitelist of ::1")
    expect_message(d.get("/%s/w" % t), 403, DENIED["message"], "127.0.0.1 on a whitelist of ::1")
    echo(get6("/%s/c" % t), "::1 in ::/127")
    echo(d.get("/%s/c" % t), "127.0.0.1 on a mixed whitelist")
    expect_message(d.get("/%s/c" % t, interface="127.0.0.2"), 403, DENIED["message"],
                   "127.0.0.2 on a mixed whitelist")
    expect_message(get6("/%s/b" % t), 403, DENIED["message"], "::1 blacklisted")
    echo(d.get("/%s/b" % t), "127.0.0.1 with ::1 blacklisted")


# ---------------------------------------------------------------------------
# ip-restriction (stream)


def test_ip_restriction_stream_mqtt(ctx):
    env = env_of(ctx)
    br = new_broker(ctx, "ipr")
    d = mqtt_dp(ctx, env.cp, name="auth-mq", streams=2, workers=1)
    pw, pb = d.stream_ports
    up = {"type": "roundrobin", "nodes": {br.addr: 1}}
    env.put("stream_routes/" + uid("sw"), {"server_port": pw, "upstream": up, "plugins": {
        "mqtt-proxy": {}, "ip-restriction": {"whitelist": ["127.0.0.1"]}}})
    env.put("stream_routes/" + uid("sb"), {"server_port": pb, "upstream": up, "plugins": {
        "mqtt-proxy": {}, "ip-restriction": {"blacklist": ["127.0.0.2/32"]}}})
    wait_probe(pw, lambda cid, code: code == (3, 0), what="whitelist route")
    wait_probe(pb, lambda cid, code: code == (3, 0), what="blacklist route")

    eq(probe(pw, uid("c"), bind="127.0.0.2"), (3, 5), "3.1.1 CONNACK from a non-whitelisted client")
    eq(probe(pw, uid("c"), level=5, bind="127.0.0.2"), (5, 0x87),
       "5.0 CONNACK from a non-whitelisted client")
    eq(probe(pb, uid("c"), bind="127.0.0.2"), (3, 5), "CONNACK to a blacklisted client")
    eq(probe(pb, uid("c"), bind="127.0.0.3"), (3, 0), "CONNACK to another client")
    cid = uid("never")
    got, how, _ = exchange(pb, connect_packet(cid, 4), bind="127.0.0.2")
    eq(parse_connack(got), (3, 5), "raw CONNACK bytes of a refusal")
    check(how in ("eof", "reset"), "connection closed after the refusal (%s)" % how)
    check(not br.has_client(cid), "a refused client reached the broker")


def test_ip_restriction_stream_tcp(ctx):
    """A plain TCP stream route (no mqtt-proxy): a refused client is closed
    without a byte; an admitted one talks to the upstream."""
    env = env_of(ctx)
    up = new_upstream(ctx, "tcp")
    d = mqtt_dp(ctx, env.cp, name="auth-tcp", streams=1, workers=1)
    p = d.stream_ports[0]
    env.put("stream_routes/" + uid("st"), {
        "server_port": p, "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}},
        "plugins": {"ip-restriction": {"blacklist": ["127.0.0.2"]}}})
    req = b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    def passes():
        got, _, _ = exchange(p, req)
        return got.startswith(b"HTTP/1.1 200")
    check(wait_until(passes, T(5)), "TCP stream route not serving")
    got, how, _ = exchange(p, req, bind="127.0.0.2")
    eq(got, b"", "bytes to a blacklisted TCP client")
    check(how in ("eof", "reset"), "blacklisted TCP client closed (%s)" % how)
    got, _, _ = exchange(p, req, bind="127.0.0.3")
    check(got.startswith(b"HTTP/1.1 200"), "other TCP client: %r" % got[:80])


# ---------------------------------------------------------------------------
# the Admin API's checks


def test_admin_refuses_bad_conf(ctx):
    env = env_of(ctx)
    t = uid("bad")
    cases = [
        ("consumers", {"username": t.replace("-", "_"),
                       "plugins": {"basic-auth": {"username": "x"}}}, "password"),
        ("consumers", {"username": t.replace("-", "_"), "plugins": {"key-auth": {}}}, "key"),
        ("routes/" + t, {"uri": "/x", "plugins": {"ip-restriction": {
            "whitelist": ["1.1.1.1"], "blacklist": ["2.2.2.2"]}}}, "ip-restriction"),
        ("routes/" + t, {"uri": "/x", "plugins": {"ip-restriction": {}}}, "ip-restriction"),
        ("routes/" + t, {"uri": "/x", "plugins": {"ip-restriction": {
            "whitelist": ["300.1.1.1"]}}}, "ip-restriction"),
        ("routes/" + t, {"uri": "/x", "plugins": {"key-auth": {"hide_credentials": "yes"}}},
         "hide_credentials"),
        ("routes/" + t, {"uri": "/x", "plugins": {"basic-auth": {"hide_credentials": 1}}},
         "hide_credentials"),
    ]
    for path, body, needle in cases:
        r = env.cp.api("PUT", path, body)
        expect_status(r, 400)
        check(needle in r.j.get("error_msg", ""),
              "PUT %s %s: error_msg %r should name %r" % (path, body, r.j, needle))
