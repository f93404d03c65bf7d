"""Admin API authentication, roles, allow_admin, common response headers."""

from harness import (check, eq, expect_error, expect_json, expect_status, minimal, uid)

# Also run against a real etcd (run_all.py --store etcd).
STORES = ("sqlite", "etcd")

ADMIN = "auth-admin-key-0123456789"
VIEWER = "auth-viewer-key-9876543210"

CONFIG = {"deployment": {"admin": {"admin_key": [
    {"name": "admin", "key": ADMIN, "role": "admin"},
    {"name": "viewer", "key": VIEWER, "role": "viewer"},
]}}}

MISSING = {"error_msg": "failed to check token", "description": "missing apikey"}
WRONG = {"error_msg": "failed to check token", "description": "wrong apikey"}
VIEWER_DENIED = {"error_msg": "failed to check token",
                 "description": "invalid method for role viewer"}


def daemon(ctx):
    return ctx.shared(config=CONFIG, admin_key=None)


def test_healthz_needs_no_key(ctx):
    d = daemon(ctx)
    r = d.get("/healthz", key=None)
    expect_json(r, 200, {"status": "ok"})


def test_missing_key_401(ctx):
    d = daemon(ctx)
    expect_json(d.get("routes", key=None), 401, MISSING)
    expect_json(d.put("routes/r1", minimal("routes"), key=None), 401, MISSING)
    expect_json(d.delete("routes/r1", key=None), 401, MISSING)
    expect_json(d.get("plugins/list", key=None), 401, MISSING)
    expect_json(d.get("dataplanes", key=None), 401, MISSING)
    expect_status(d.get("routes/r1", key=ADMIN), 404)  # the PUT stored nothing


def test_wrong_key_401(ctx):
    d = daemon(ctx)
    expect_json(d.get("routes", key="not-the-key"), 401, WRONG)
    expect_json(d.put("upstreams/u1", minimal("upstreams"), key="not-the-key"), 401, WRONG)
    # An empty key is not a valid key either.
    r = d.get("routes", key=None, headers=["X-API-KEY;"])
    expect_error(r, 401, exact="failed to check token")
    expect_status(d.get("upstreams/u1", key=ADMIN), 404)


def test_admin_key_in_header_any_case(ctx):
    d = daemon(ctx)
    expect_status(d.get("routes", key=None, headers=["x-api-key: " + ADMIN]), 200)
    expect_status(d.get("routes", key=None, headers=["X-Api-Key: " + ADMIN]), 200)


def test_key_in_query_arg(ctx):
    d = daemon(ctx)
    expect_status(d.get("routes?api_key=" + ADMIN, key=None), 200)
    expect_json(d.get("routes?api_key=wrong", key=None), 401, WRONG)
    i = uid("q")
    r = d.put("upstreams/%s?api_key=%s" % (i, ADMIN), minimal("upstreams"), key=None)
    expect_status(r, 201)
    expect_json(d.put("upstreams/%s?api_key=%s" % (i, VIEWER), minimal("upstreams"), key=None),
                401, VIEWER_DENIED)


def test_viewer_can_read(ctx):
    d = daemon(ctx)
    i = uid("v")
    expect_status(d.put("upstreams/" + i, minimal("upstreams"), key=ADMIN), 201)
    expect_status(d.get("upstreams/" + i, key=VIEWER), 200)
    r = d.get("upstreams", key=VIEWER)
    expect_status(r, 200)
    check(any(it["key"] == "/apisix/upstreams/" + i for it in r.j["list"]),
          "viewer's list lacks the upstream")
    expect_status(d.get("plugins/list", key=VIEWER), 200)
    expect_status(d.get("dataplanes", key=VIEWER), 200)
    expect_status(d.get("plugins/limit-count", key=VIEWER), 200)


def test_viewer_cannot_write(ctx):
    d = daemon(ctx)
    i = uid("vw")
    created = d.must("PUT", "upstreams/" + i, minimal("upstreams"), key=ADMIN)
    body = {"type": "roundrobin", "nodes": {"127.0.0.9:80": 1}}
    expect_json(d.put("upstreams/" + i, body, key=VIEWER), 401, VIEWER_DENIED)
    expect_json(d.post("upstreams", body, key=VIEWER), 401, VIEWER_DENIED)
    expect_json(d.patch("upstreams/" + i, {"nodes": {"127.0.0.9:80": 1}}, key=VIEWER), 401,
                VIEWER_DENIED)
    expect_json(d.delete("upstreams/" + i, key=VIEWER), 401, VIEWER_DENIED)
    expect_json(d.put("routes/" + i, minimal("routes"), key=VIEWER), 401, VIEWER_DENIED)
    expect_json(d.post("schema/validate/routes", minimal("routes"), key=VIEWER), 401,
                VIEWER_DENIED)
    # Nothing changed.
    r = d.get("upstreams/" + i, key=ADMIN)
    expect_status(r, 200)
    eq(r.j["value"], created["value"], "upstream after the viewer's attempts")
    eq(r.j["modifiedIndex"], created["modifiedIndex"], "modifiedIndex after viewer's attempts")
    expect_status(d.get("routes/" + i, key=ADMIN), 404)
    total = d.must("GET", "upstreams", key=ADMIN)["total"]
    check(not any(it["value"].get("nodes") == body["nodes"]
                  for it in d.must("GET", "upstreams?page_size=500", key=ADMIN)["list"]),
          "viewer's POST created an upstream (total %d)" % total)


def test_default_allow_admin_is_127_0_0_0_24(ctx):
    d = daemon(ctx)
    # 127.0.0.5 is inside 127.0.0.0/24.
    expect_status(d.get("routes", key=ADMIN, interface="127.0.0.5"), 200)
    # 127.0.1.1 is outside: 403 even with a good key, and before any key check.
    r = d.get("routes", key=ADMIN, interface="127.0.1.1")
    expect_status(r, 403)
    check(r.is_json(), "403 body is not JSON: %r" % r.text[:200])
    expect_status(d.get("routes", key=None, interface="127.0.1.1"), 403)
    i = uid("deny")
    expect_status(d.put("upstreams/" + i, minimal("upstreams"), key=ADMIN,
                        interface="127.0.1.1"), 403)
    expect_status(d.get("upstreams/" + i, key=ADMIN), 404)


def test_allow_admin_custom_list(ctx):
    cfg = {"deployment": {"admin": {
        "admin_key": [{"name": "admin", "key": ADMIN, "role": "admin"}],
        "allow_admin": ["127.0.0.2/32", "127.0.3.0/24"]}}}
    d = ctx.daemon(config=cfg, admin_key=None)
    expect_status(d.get("routes", key=ADMIN, interface="127.0.0.2"), 200)
    expect_status(d.get("routes", key=ADMIN, interface="127.0.3.77"), 200)
    expect_status(d.get("routes", key=ADMIN, interface="127.0.0.1"), 403)
    expect_status(d.get("routes", key=ADMIN, interface="127.0.0.3"), 403)
    expect_status(d.put("upstreams/x", minimal("upstreams"), key=ADMIN, interface="127.0.0.1"),
                  403)
    expect_status(d.get("upstreams/x", key=ADMIN, interface="127.0.0.2"), 404)


def test_every_response_is_json_with_api_version_header(ctx):
    d = daemon(ctx)
    i = uid("h")
    big = b'{"uri":"/x","desc":"' + b"a" * (1536 * 1024 + 10) + b'"}'
    samples = [
        d.get("/healthz", key=None),                                   # 200
        d.put("upstreams/" + i, minimal("upstreams"), key=ADMIN),      # 201
        d.put("upstreams/" + i, minimal("upstreams"), key=ADMIN),      # 200
        d.get("upstreams", key=ADMIN),                                 # 200 list
        d.get("upstreams/" + i, key=ADMIN),                            # 200 one
        d.get("routes", key=None),                                     # 401
        d.get("routes", key=ADMIN, interface="127.0.1.1"),             # 403
        d.get("routes/nope-" + i, key=ADMIN),                          # 404
        d.put("routes/" + i, {"uri": 123}, key=ADMIN),                 # 400
        d.post("consumers", {"username": "x"}, key=ADMIN),             # 405
        d.api("TRACE", "routes/1", key=ADMIN),                         # 405
        d.put("routes/" + i, big, key=ADMIN),                          # 413
        d.get("plugins/list", key=ADMIN),                              # 200 array
        d.get("dataplanes", key=ADMIN),                                # 200
        d.delete("upstreams/" + i, key=ADMIN),                         # 200
    ]
    eq([r.status for r in samples],
       [200, 201, 200, 200, 200, 401, 403, 404, 400, 405, 405, 413, 200, 200, 200],
       "statuses of the sample requests")
    for r in samples:
        check(r.headers.get("x-api-version") == "v3",
              "%s: X-API-VERSION header is %r, expected 'v3'" % (r.where(),
                                                                 r.headers.get("x-api-version")))
        ct = r.headers.get("content-type", "")
        check(ct.split(";")[0].strip() == "application/json",
              "%s: Content-Type is %r" % (r.where(), ct))
        check(r.is_json(), "%s: body is not JSON: %r" % (r.where(), r.text[:200]))
