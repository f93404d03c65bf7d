"""Admin API resources: create, read, replace, patch, delete; ids; references;
validation; bad input; plugins; schema validation; ssls."""

import json
import re
import subprocess
import threading
import time

from harness import (KINDS, TEST_CERT, TEST_KEY, T, check, eq, expect_error, expect_json,
                     expect_status, minimal, uid, upstream_conf)

# Also run against a real etcd (run_all.py --store etcd).
STORES = ("sqlite", "etcd")

NOT_FOUND = {"message": "Key not found"}


def daemon(ctx):
    return ctx.shared()


def total(d, coll):
    return d.must("GET", coll)["total"]


def check_item_shape(body, coll, id_, what):
    check(isinstance(body, dict), "%s: body is not an object" % what)
    for k in ("key", "value", "createdIndex", "modifiedIndex"):
        check(k in body, "%s: body lacks %r: %s" % (what, k, json.dumps(body)[:300]))
    eq(body["key"], "/apisix/%s/%s" % (coll, id_), what + " key")
    check(isinstance(body["createdIndex"], int) and body["createdIndex"] > 0,
          "%s: createdIndex %r" % (what, body["createdIndex"]))
    check(isinstance(body["modifiedIndex"], int) and body["modifiedIndex"] >= body["createdIndex"],
          "%s: modifiedIndex %r < createdIndex" % (what, body["modifiedIndex"]))


# ---------------------------------------------------------------------------
# PUT


def test_put_route_create_then_replace(ctx):
    d = daemon(ctx)
    i = uid("r")
    conf = {"uri": "/hello", "name": "hello", "upstream": upstream_conf()}
    r = d.put("routes/" + i, conf)
    expect_status(r, 201)
    b = r.j
    check_item_shape(b, "routes", i, "PUT (new)")
    v = b["value"]
    eq(v.get("id"), i, "value.id")
    eq(v.get("uri"), "/hello", "value.uri")
    eq(v.get("name"), "hello", "value.name")
    for f in ("create_time", "update_time"):
        check(isinstance(v.get(f), int), "value.%s is not an integer: %r" % (f, v.get(f)))
        check(abs(v[f] - time.time()) < 120, "value.%s %r is not now (unix seconds)" % (f, v[f]))
    eq(b["createdIndex"], b["modifiedIndex"], "createdIndex vs modifiedIndex on create")
    # Replace.
    r2 = d.put("routes/" + i, dict(conf, uri="/hello2"))
    expect_status(r2, 200)
    b2 = r2.j
    check_item_shape(b2, "routes", i, "PUT (replace)")
    eq(b2["value"]["uri"], "/hello2", "replaced uri")
    eq(b2["createdIndex"], b["createdIndex"], "createdIndex kept on replace")
    check(b2["modifiedIndex"] > b["modifiedIndex"], "modifiedIndex did not grow on replace "
          "(%s -> %s)" % (b["modifiedIndex"], b2["modifiedIndex"]))
    # GET shows the replacement.
    g = d.get("routes/" + i)
    expect_status(g, 200)
    check_item_shape(g.j, "routes", i, "GET")
    eq(g.j["value"], b2["value"], "GET value vs PUT response value")
    eq((g.j["createdIndex"], g.j["modifiedIndex"]), (b2["createdIndex"], b2["modifiedIndex"]),
       "GET indexes")


def test_put_keeps_create_time_refreshes_update_time(ctx):
    d = daemon(ctx)
    i = uid("t")
    v1 = d.must("PUT", "upstreams/" + i, upstream_conf(), status=201)["value"]
    time.sleep(1.1)
    v2 = d.must("PUT", "upstreams/" + i, upstream_conf({"127.0.0.1:81": 1}), status=200)["value"]
    eq(v2["create_time"], v1["create_time"], "create_time after replace")
    check(v2["update_time"] > v1["update_time"], "update_time not refreshed on replace "
          "(%s -> %s)" % (v1["update_time"], v2["update_time"]))
    time.sleep(1.1)
    v3 = d.must("PATCH", "upstreams/" + i, {"nodes": {"127.0.0.1:82": 1}}, status=200)["value"]
    eq(v3["create_time"], v1["create_time"], "create_time after PATCH")
    check(v3["update_time"] > v2["update_time"], "update_time not refreshed on PATCH "
          "(%s -> %s)" % (v2["update_time"], v3["update_time"]))


def test_put_rejects_client_timestamps(ctx):
    d = daemon(ctx)
    i = uid("ts")
    expect_json(d.put("routes/" + i, dict(minimal("routes"), create_time=1)), 400,
                {"error_msg": "the property is forbidden: create_time"})
    expect_json(d.put("routes/" + i, dict(minimal("routes"), update_time=1)), 400,
                {"error_msg": "the property is forbidden: update_time"})
    expect_json(d.post("upstreams", dict(minimal("upstreams"), create_time=1)), 400,
                {"error_msg": "the property is forbidden: create_time"})
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)


def test_put_body_id_must_match_path(ctx):
    d = daemon(ctx)
    i = uid("id")
    expect_json(d.put("routes/" + i, dict(minimal("routes"), id=i + "x")), 400,
                {"error_msg": "wrong route id"})
    expect_json(d.put("upstreams/" + i, dict(minimal("upstreams"), id="other")), 400,
                {"error_msg": "wrong upstream id"})
    expect_json(d.put("services/" + i, dict(minimal("services"), id="other")), 400,
                {"error_msg": "wrong service id"})
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)
    # The same id in body and path is fine.
    r = d.put("routes/" + i, dict(minimal("routes"), id=i))
    expect_status(r, 201)
    eq(r.j["value"]["id"], i, "value.id")


def test_put_without_id(ctx):
    d = daemon(ctx)
    for coll, (kind, _, _) in KINDS.items():
        if coll == "consumers":
            continue
        before = total(d, coll)
        r = d.put(coll, minimal(coll, uid("noid")))
        expect_json(r, 400, {"error_msg": "missing %s id" % kind})
        eq(total(d, coll), before, "%s total after PUT without id" % coll)


def test_every_kind_round_trip(ctx):
    d = daemon(ctx)
    for coll in KINDS:
        i = uid(coll[:4])
        path = "consumers/" + i.replace("-", "_") if coll == "consumers" else coll + "/" + i
        id_ = path.split("/", 1)[1]
        conf = minimal(coll, i)
        r = d.put(path, conf)
        expect_status(r, 201)
        check_item_shape(r.j, coll, id_, "PUT " + path)
        g = d.get(path)
        expect_status(g, 200)
        check_item_shape(g.j, coll, id_, "GET " + path)
        for k, v in conf.items():
            if coll == "ssls" and k == "key":
                continue
            if k == "upstream":
                for uk, uv in v.items():
                    eq(g.j["value"][k].get(uk), uv, "%s value.upstream.%s" % (path, uk))
            elif k == "plugins":
                for pn in v:
                    check(pn in g.j["value"]["plugins"], "%s: plugin %s missing" % (path, pn))
            else:
                eq(g.j["value"].get(k), v, "%s value.%s" % (path, k))
        # "deleted" is etcd's count of deleted keys, as in APISIX.
        expect_json(d.delete(path), 200, {"deleted": "1",
                                          "key": "/apisix/%s/%s" % (coll, id_)})
        expect_json(d.get(path), 404, NOT_FOUND)


# ---------------------------------------------------------------------------
# POST


def test_post_generates_20_digit_ids(ctx):
    d = daemon(ctx)
    r1 = d.post("routes", minimal("routes"))
    expect_status(r1, 201)
    r2 = d.post("routes", minimal("routes"))
    expect_status(r2, 201)
    ids = []
    for r in (r1, r2):
        b = r.j
        m = re.fullmatch(r"/apisix/routes/(\d{20})", b.get("key", ""))
        check(m, "POST key %r is not /apisix/routes/<20 digits>" % b.get("key"))
        eq(b["value"].get("id"), m.group(1), "value.id vs key")
        check_item_shape(b, "routes", m.group(1), "POST")
        ids.append(m.group(1))
        g = d.get("routes/" + m.group(1))
        expect_status(g, 200)
        eq(g.j["value"], b["value"], "GET after POST")
    check(ids[0] != ids[1], "two POSTs got the same id %s" % ids[0])
    check(ids[1] > ids[0], "POST ids not increasing: %s then %s" % tuple(ids))


def test_post_with_id_in_path_400(ctx):
    d = daemon(ctx)
    i = uid("p")
    expect_json(d.post("routes/" + i, minimal("routes")), 400,
                {"error_msg": "wrong route id, do not need it"})
    expect_json(d.post("upstreams/" + i, minimal("upstreams")), 400,
                {"error_msg": "wrong upstream id, do not need it"})
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)


def test_post_supported_collections(ctx):
    d = daemon(ctx)
    for coll in ("routes", "services", "upstreams", "stream_routes", "ssls"):
        r = d.post(coll, minimal(coll))
        expect_status(r, 201)
        check(re.fullmatch(r"/apisix/%s/\d{20}" % coll, r.j.get("key", "")),
              "POST /%s key %r" % (coll, r.j.get("key")))


def test_unsupported_methods_405(ctx):
    d = daemon(ctx)
    cid = "c_" + uid("u").replace("-", "_")
    gid, pid, sid = uid("g"), uid("pc"), uid("s")
    d.must("PUT", "consumers/" + cid, {"username": cid})
    d.must("PUT", "global_rules/" + gid, minimal("global_rules"))
    d.must("PUT", "plugin_configs/" + pid, minimal("plugin_configs"))
    d.must("PUT", "stream_routes/" + sid, minimal("stream_routes"))
    before = {c: total(d, c) for c in ("consumers", "global_rules", "plugin_configs")}
    cases = [
        ("POST", "consumers", {"username": "nobody_post"}, "consumer"),
        ("PATCH", "consumers/" + cid, {"desc": "x"}, "consumer"),
        ("POST", "global_rules", minimal("global_rules"), "global_rule"),
        ("POST", "plugin_configs", minimal("plugin_configs"), "plugin_config"),
        ("PATCH", "stream_routes/" + sid, {"server_port": 9999}, "stream_route"),
    ]
    for method, path, body, kind in cases:
        r = d.api(method, path, body)
        expect_json(r, 405, {"error_msg": "not supported `%s` method for %s" % (method, kind)})
    for c, n in before.items():
        eq(total(d, c), n, "%s total after refused methods" % c)
    g = d.must("GET", "consumers/" + cid)
    check("desc" not in g["value"], "refused PATCH changed the consumer")
    eq(d.must("GET", "stream_routes/" + sid)["value"]["server_port"], 9100,
       "stream route server_port after refused PATCH")


def test_patch_supported_collections(ctx):
    d = daemon(ctx)
    for coll in ("routes", "services", "upstreams", "ssls", "global_rules", "plugin_configs"):
        i = uid(coll[:3])
        d.must("PUT", "%s/%s" % (coll, i), minimal(coll, i), status=201)
        patch = {"labels": {"patched": "yes"}} if coll not in ("global_rules", "ssls") \
            else ({"snis": ["a.example.com", "test.example.com"]} if coll == "ssls"
                  else {"plugins": {"prometheus": {"prefer_name": True}}})
        r = d.patch("%s/%s" % (coll, i), patch)
        expect_status(r, 200)
        check_item_shape(r.j, coll, i, "PATCH " + coll)
        for k, v in patch.items():
            if k == "plugins":
                check("prometheus" in r.j["value"]["plugins"], "PATCH %s plugins" % coll)
            else:
                eq(r.j["value"][k], v, "PATCH %s value.%s" % (coll, k))


# ---------------------------------------------------------------------------
# consumers


def test_consumers_by_username(ctx):
    d = daemon(ctx)
    r = d.put("consumers", {"username": "jack", "desc": "first"})
    expect_status(r, 201)
    check_item_shape(r.j, "consumers", "jack", "PUT /consumers")
    eq(r.j["value"]["username"], "jack", "username")
    r = d.put("consumers/jack", {"username": "jack", "desc": "second"})
    expect_status(r, 200)
    check_item_shape(r.j, "consumers", "jack", "PUT /consumers/jack")
    g = d.get("consumers/jack")
    expect_status(g, 200)
    eq(g.j["value"]["desc"], "second", "consumer desc after PUT /consumers/jack")
    # PUT /consumers/<name> without username in the body is the same consumer.
    r = d.put("consumers/jill", {"desc": "no username in body"})
    check(r.status in (200, 201, 400), "PUT /consumers/jill without username: %r" % r)
    if r.status in (200, 201):
        eq(r.j["key"], "/apisix/consumers/jill", "key")
    expect_status(d.put("consumers", {"desc": "no username"}), 400)
    expect_json(d.delete("consumers/jack"), 200, {"deleted": "1",
                                                  "key": "/apisix/consumers/jack"})
    expect_json(d.get("consumers/jack"), 404, NOT_FOUND)


# ---------------------------------------------------------------------------
# GET / DELETE


def test_get_unknown_id_404(ctx):
    d = daemon(ctx)
    for coll in KINDS:
        expect_json(d.get("%s/does-not-exist-%s" % (coll, uid("n"))), 404, NOT_FOUND)


def test_delete(ctx):
    d = daemon(ctx)
    i = uid("del")
    d.must("PUT", "routes/" + i, minimal("routes"), status=201)
    expect_json(d.delete("routes/" + i), 200, {"deleted": "1", "key": "/apisix/routes/" + i})
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)
    expect_json(d.delete("routes/" + i), 404, NOT_FOUND)
    expect_json(d.delete("upstreams/never-" + i), 404, NOT_FOUND)


# ---------------------------------------------------------------------------
# PATCH


def test_patch_is_json_merge_patch(ctx):
    d = daemon(ctx)
    i = uid("m")
    conf = {"uri": "/m", "name": "before", "desc": "to be removed",
            "labels": {"a": "1", "b": "2"}, "upstream": upstream_conf()}
    c = d.must("PUT", "routes/" + i, conf, status=201)
    r = d.patch("routes/" + i, {"name": "after", "desc": None, "labels": {"b": None, "c": "3"}})
    expect_status(r, 200)
    check_item_shape(r.j, "routes", i, "PATCH")
    v = r.j["value"]
    eq(v.get("name"), "after", "patched name")
    check("desc" not in v, "null did not delete desc: %r" % v.get("desc"))
    eq(v.get("labels"), {"a": "1", "c": "3"}, "merged labels")
    eq(v.get("uri"), "/m", "untouched uri")
    eq(v.get("upstream", {}).get("nodes"), conf["upstream"]["nodes"], "untouched upstream")
    eq(v.get("id"), i, "id")
    eq(r.j["createdIndex"], c["createdIndex"], "createdIndex after PATCH")
    check(r.j["modifiedIndex"] > c["modifiedIndex"], "modifiedIndex did not grow on PATCH")
    g = d.must("GET", "routes/" + i)
    eq(g["value"], v, "GET after PATCH")


def test_patch_result_is_validated(ctx):
    d = daemon(ctx)
    i = uid("pv")
    c = d.must("PUT", "routes/" + i, minimal("routes", i), status=201)
    expect_error(d.patch("routes/" + i, {"uri": 123}), 400, prefix="invalid configuration: ",
                 contains='property "uri" validation failed: wrong type: expected string, '
                          'got number')
    expect_error(d.patch("routes/" + i, {"no_such_field": 1}), 400,
                 prefix="invalid configuration: ",
                 contains="additional properties forbidden, found no_such_field")
    # Removing every way of matching a request makes the route invalid.
    expect_status(d.patch("routes/" + i, {"uri": None}), 400)
    expect_error(d.patch("routes/" + i, {"plugins": {"foo": {}}}), 400,
                 exact="unknown plugin [foo]")
    g = d.must("GET", "routes/" + i)
    eq(g["value"], c["value"], "route after refused PATCHes")
    eq(g["modifiedIndex"], c["modifiedIndex"], "modifiedIndex after refused PATCHes")


def test_patch_sub_path_replaces_subtree(ctx):
    d = daemon(ctx)
    i = uid("sp")
    conf = {"uri": "/sp", "upstream": {"type": "roundrobin",
                                       "nodes": {"127.0.0.1:1980": 1, "127.0.0.1:1981": 1}}}
    d.must("PUT", "routes/" + i, conf, status=201)
    r = d.patch("routes/%s/upstream/nodes" % i, {"127.0.0.2:80": 5})
    expect_status(r, 200)
    eq(r.j["value"]["upstream"]["nodes"], {"127.0.0.2:80": 5}, "nodes replaced (not merged)")
    eq(r.j["value"]["upstream"]["type"], "roundrobin", "upstream.type kept")
    eq(r.j["value"]["uri"], "/sp", "uri kept")
    g = d.must("GET", "routes/" + i)
    eq(g["value"]["upstream"]["nodes"], {"127.0.0.2:80": 5}, "GET nodes after sub-path PATCH")
    # A scalar sub-path.
    r = d.patch("routes/%s/uri" % i, json.dumps("/sp-new"))
    expect_status(r, 200)
    eq(r.j["value"]["uri"], "/sp-new", "uri after PATCH /uri")


def test_patch_sub_path_creates_missing_objects(ctx):
    d = daemon(ctx)
    i = uid("spc")
    d.must("PUT", "routes/" + i, minimal("routes", i), status=201)
    r = d.patch("routes/%s/plugins/proxy-rewrite" % i, {"uri": "/rewritten"})
    expect_status(r, 200)
    pr = r.j["value"].get("plugins", {}).get("proxy-rewrite")
    check(isinstance(pr, dict) and pr.get("uri") == "/rewritten",
          "plugins.proxy-rewrite not created: %r" % r.j["value"].get("plugins"))
    g = d.must("GET", "routes/" + i)
    eq(g["value"]["plugins"]["proxy-rewrite"]["uri"], "/rewritten", "GET after sub-path PATCH")


def test_patch_sub_path_result_is_validated(ctx):
    d = daemon(ctx)
    i = uid("spv")
    c = d.must("PUT", "routes/" + i, minimal("routes", i), status=201)
    expect_status(d.patch("routes/%s/upstream/nodes" % i, json.dumps("not-nodes")), 400)
    expect_status(d.patch("routes/%s/uri" % i, 42), 400)
    g = d.must("GET", "routes/" + i)
    eq(g["value"], c["value"], "route after refused sub-path PATCHes")


def test_patch_missing_id_404(ctx):
    d = daemon(ctx)
    i = uid("pm")
    expect_status(d.patch("routes/" + i, {"name": "x"}), 404)
    expect_status(d.patch("routes/%s/upstream/nodes" % i, {"127.0.0.1:80": 1}), 404)
    expect_status(d.patch("upstreams/" + i, {"nodes": {"127.0.0.1:80": 1}}), 404)
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)


# ---------------------------------------------------------------------------
# ids


def test_invalid_ids_400(ctx):
    d = daemon(ctx)
    bad = ["x" * 65, "a%20b", "a%24b", "a%2Cb", "caf%C3%A9", "a%22b", "a%3Bb"]
    before = total(d, "upstreams")
    for raw in bad:
        r = d.put("upstreams/" + raw, minimal("upstreams"))
        msg = expect_error(r, 400)
        check("id" in msg, "PUT /upstreams/%s: error_msg does not mention the id: %r" % (raw, msg))
    # A bad id in the body.
    r = d.put("upstreams", dict(minimal("upstreams"), id="has space"))
    expect_status(r, 400)
    eq(total(d, "upstreams"), before, "upstream total after bad ids")


def test_valid_id_edge_cases(ctx):
    d = daemon(ctx)
    for i in ("y" * 64, "A-b_C.9", "0", "-", "_", "1.2.3"):
        r = d.put("upstreams/" + i, minimal("upstreams"))
        check(r.status in (200, 201), "PUT /upstreams/%s: %r" % (i, r))
        eq(r.j["key"], "/apisix/upstreams/" + i, "key")
        eq(d.must("GET", "upstreams/" + i)["value"]["id"], i, "GET value.id")
        expect_status(d.delete("upstreams/" + i), 200)


# ---------------------------------------------------------------------------
# validation


def test_validation_wrong_type(ctx):
    d = daemon(ctx)
    i = uid("vt")
    expect_error(d.put("routes/" + i, {"uri": 123}), 400, prefix="invalid configuration: ",
                 contains='property "uri" validation failed: wrong type: expected string, '
                          'got number')
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)


def test_validation_additional_property(ctx):
    d = daemon(ctx)
    i = uid("va")
    expect_error(d.put("routes/" + i, dict(minimal("routes"), foo_bar=1)), 400,
                 prefix="invalid configuration: ",
                 contains="additional properties forbidden, found foo_bar")
    expect_error(d.put("upstreams/" + i, dict(minimal("upstreams"), foo_bar=1)), 400,
                 prefix="invalid configuration: ",
                 contains="additional properties forbidden, found foo_bar")
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)


def test_validation_unknown_plugin(ctx):
    d = daemon(ctx)
    i = uid("up")
    expect_json(d.put("routes/" + i, dict(minimal("routes"), plugins={"foo": {}})), 400,
                {"error_msg": "unknown plugin [foo]"})
    expect_json(d.put("global_rules/" + i, {"plugins": {"foo": {}}}), 400,
                {"error_msg": "unknown plugin [foo]"})
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)


def test_validation_plugin_config_error(ctx):
    d = daemon(ctx)
    i = uid("pe")
    for bad in ({"time_window": 60}, {"count": -1, "time_window": 60},
                {"count": "ten", "time_window": 60}):
        expect_error(d.put("routes/" + i, dict(minimal("routes"),
                                               plugins={"limit-count": bad})), 400,
                     prefix="failed to check the configuration of plugin limit-count err:")
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)
    # And a good one is accepted.
    r = d.put("routes/" + i, dict(minimal("routes"),
                                  plugins={"limit-count": {"count": 2, "time_window": 60}}))
    expect_status(r, 201)


def test_validation_rules(ctx):
    d = daemon(ctx)
    i = uid("vr")
    # A route needs uri or uris.
    expect_error(d.put("routes/" + i, {"upstream": upstream_conf()}), 400)
    # chash needs a key.
    expect_error(d.put("upstreams/" + i, {"type": "chash", "nodes": {"127.0.0.1:80": 1}}), 400)
    # Nodes weight must be an integer >= 0.
    expect_error(d.put("upstreams/" + i, {"type": "roundrobin",
                                          "nodes": {"127.0.0.1:80": "heavy"}}), 400)
    # An unknown upstream type.
    expect_error(d.put("upstreams/" + i, {"type": "random-ish", "nodes": {"127.0.0.1:80": 1}}),
                 400)
    # Valid chash.
    r = d.put("upstreams/" + i, {"type": "chash", "hash_on": "vars", "key": "mqtt_client_id",
                                 "nodes": {"127.0.0.1:1883": 1}})
    expect_status(r, 201)


def test_defaults_injected(ctx):
    d = daemon(ctx)
    i = uid("def")
    r = d.put("upstreams/" + i, {"type": "roundrobin", "nodes": {"127.0.0.1:80": 1}})
    expect_status(r, 201)
    g = d.must("GET", "upstreams/" + i)
    for body, what in ((r.j, "PUT response"), (g, "GET")):
        v = body["value"]
        eq((v.get("scheme"), v.get("pass_host"), v.get("hash_on")), ("http", "pass", "vars"),
           "upstream defaults (scheme, pass_host, hash_on) in " + what)
    r = d.put("routes/" + i, {"uri": "/def", "upstream_id": i})
    expect_status(r, 201)
    g = d.must("GET", "routes/" + i)
    for body, what in ((r.j, "PUT response"), (g, "GET")):
        v = body["value"]
        eq((v.get("priority"), v.get("status")), (0, 1),
           "route defaults (priority, status) in " + what)
    # Explicit values are kept.
    r = d.put("routes/" + i, {"uri": "/def", "upstream_id": i, "priority": 7, "status": 0})
    expect_status(r, 200)
    eq((r.j["value"]["priority"], r.j["value"]["status"]), (7, 0), "explicit priority, status")


# ---------------------------------------------------------------------------
# references


def test_missing_references_400(ctx):
    d = daemon(ctx)
    i = uid("ref")
    m = "missing-" + i
    cases = [
        ("routes/" + i, {"uri": "/r", "upstream_id": m},
         "failed to fetch upstream info by upstream id [%s], response code: 404" % m),
        ("routes/" + i, {"uri": "/r", "service_id": m},
         "failed to fetch service info by service id [%s], response code: 404" % m),
        ("routes/" + i, {"uri": "/r", "upstream": upstream_conf(), "plugin_config_id": m},
         "failed to fetch plugin config info by plugin config id [%s], response code: 404" % m),
        ("services/" + i, {"upstream_id": m},
         "failed to fetch upstream info by upstream id [%s], response code: 404" % m),
        ("stream_routes/" + i, {"server_port": 9100, "upstream_id": m},
         "failed to fetch upstream info by upstream id [%s], response code: 404" % m),
    ]
    for path, body, msg in cases:
        expect_json(d.put(path, body), 400, {"error_msg": msg})
        expect_json(d.get(path), 404, NOT_FOUND)
    # POST checks references too.
    expect_json(d.post("routes", {"uri": "/r", "upstream_id": m}), 400, {
        "error_msg": "failed to fetch upstream info by upstream id [%s], response code: 404" % m})


def test_integer_reference_ids(ctx):
    d = daemon(ctx)
    expect_json(d.put("routes/" + uid("ir"), {"uri": "/r", "upstream_id": 987654321}), 400, {
        "error_msg": "failed to fetch upstream info by upstream id [987654321], "
                     "response code: 404"})
    n = str(int(time.time() * 1000) % 100000000 + 1000)
    d.must("PUT", "upstreams/" + n, minimal("upstreams"), status=201)
    r = d.put("routes/" + uid("ir"), {"uri": "/r", "upstream_id": int(n)})
    expect_status(r, 201)


def test_existing_references_accepted(ctx):
    d = daemon(ctx)
    i = uid("ok")
    d.must("PUT", "upstreams/" + i, minimal("upstreams"), status=201)
    d.must("PUT", "services/" + i, {"upstream_id": i}, status=201)
    d.must("PUT", "plugin_configs/" + i, minimal("plugin_configs"), status=201)
    r = d.put("routes/" + i, {"uri": "/ok", "upstream_id": i, "service_id": i,
                              "plugin_config_id": i})
    expect_status(r, 201)
    r = d.put("stream_routes/" + i, {"server_port": 9100, "upstream_id": i})
    expect_status(r, 201)


def test_delete_upstream_in_use(ctx):
    d = daemon(ctx)
    i = uid("du")
    d.must("PUT", "upstreams/" + i, minimal("upstreams"), status=201)
    d.must("PUT", "routes/" + i, {"uri": "/du", "upstream_id": i}, status=201)
    expect_json(d.delete("upstreams/" + i), 400, {
        "error_msg": "can not delete this upstream, route [%s] is still using it now" % i})
    expect_status(d.get("upstreams/" + i), 200)
    expect_json(d.delete("upstreams/%s?force=true" % i), 200,
                {"deleted": "1", "key": "/apisix/upstreams/" + i})
    expect_json(d.get("upstreams/" + i), 404, NOT_FOUND)


def test_delete_upstream_free_again_after_route_deleted(ctx):
    d = daemon(ctx)
    i = uid("df")
    d.must("PUT", "upstreams/" + i, minimal("upstreams"), status=201)
    d.must("PUT", "routes/" + i, {"uri": "/df", "upstream_id": i}, status=201)
    expect_status(d.delete("upstreams/" + i), 400)
    # Re-pointing the route away also frees it.
    d.must("PUT", "routes/" + i, {"uri": "/df", "upstream": upstream_conf()}, status=200)
    expect_json(d.delete("upstreams/" + i), 200,
                {"deleted": "1", "key": "/apisix/upstreams/" + i})


def test_delete_upstream_used_by_service(ctx):
    # APISIX refuses this too ("service [id] is still using it now").
    d = daemon(ctx)
    i = uid("dus")
    d.must("PUT", "upstreams/" + i, minimal("upstreams"), status=201)
    d.must("PUT", "services/" + i, {"upstream_id": i}, status=201)
    expect_error(d.delete("upstreams/" + i), 400,
                 exact="can not delete this upstream, service [%s] is still using it now" % i)
    expect_status(d.get("upstreams/" + i), 200)


def test_delete_service_in_use(ctx):
    d = daemon(ctx)
    i = uid("ds")
    d.must("PUT", "services/" + i, minimal("services"), status=201)
    d.must("PUT", "routes/" + i, {"uri": "/ds", "service_id": i}, status=201)
    expect_json(d.delete("services/" + i), 400, {
        "error_msg": "can not delete this service, route [%s] is still using it now" % i})
    expect_status(d.get("services/" + i), 200)
    expect_status(d.delete("services/%s?force=true" % i), 200)
    expect_json(d.get("services/" + i), 404, NOT_FOUND)


def test_delete_plugin_config_in_use(ctx):
    d = daemon(ctx)
    i = uid("dp")
    d.must("PUT", "plugin_configs/" + i, minimal("plugin_configs"), status=201)
    d.must("PUT", "routes/" + i, {"uri": "/dp", "upstream": upstream_conf(),
                                  "plugin_config_id": i}, status=201)
    # APISIX says "plugin config"; the spec's kind name is plugin_config: accept either.
    expect_error(d.delete("plugin_configs/" + i), 400,
                 regex=r"^can not delete this plugin[ _]config, route \[%s\] is still using it "
                       r"now$" % re.escape(i))
    expect_status(d.get("plugin_configs/" + i), 200)
    expect_status(d.delete("plugin_configs/%s?force=true" % i), 200)
    expect_json(d.get("plugin_configs/" + i), 404, NOT_FOUND)


# ---------------------------------------------------------------------------
# bad input


def big_nodes(size):
    """An upstream nodes hash whose JSON is about size bytes."""
    nodes = {}
    n = 0
    length = 2
    while length < size:
        k = "10.%d.%d.%d:%d" % (n >> 16 & 255, n >> 8 & 255, n & 255, 1000 + n % 50000)
        nodes[k] = 1
        length += len(k) + 7
        n += 1
    return nodes


def assert_alive_and_unchanged(d, coll, before):
    expect_json(d.get("/healthz", key=None), 200, {"status": "ok"})
    eq(total(d, coll), before, "%s total after a bad request" % coll)


def test_malformed_json_400(ctx):
    d = daemon(ctx)
    before = total(d, "routes")
    i = uid("bj")
    for raw in (b'{"uri": "/x", ', b'{uri: "/x"}', b'{"uri":"/x"} trailing', b"\xff\xfe{}",
                b'{"uri":"/x","upstream":{"nodes":{"a:1":1},}}'):
        expect_error(d.put("routes/" + i, raw), 400, prefix="invalid request body")
    expect_error(d.post("routes", b"{not json"), 400, prefix="invalid request body")
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)
    assert_alive_and_unchanged(d, "routes", before)


def test_body_over_1_5_mib_413(ctx):
    d = daemon(ctx)
    before = total(d, "upstreams")
    i = uid("big")
    nodes = big_nodes(1536 * 1024 + 4096)
    body = json.dumps({"type": "roundrobin", "nodes": nodes}).encode()
    check(len(body) > 1.5 * 1024 * 1024, "test body too small")
    r = d.put("upstreams/" + i, body)
    expect_error(r, 413)
    expect_json(d.get("upstreams/" + i), 404, NOT_FOUND)
    assert_alive_and_unchanged(d, "upstreams", before)


def test_large_body_under_limit_accepted(ctx):
    d = daemon(ctx)
    i = uid("large")
    nodes = big_nodes(1200 * 1024)
    r = d.put("upstreams/" + i, {"type": "roundrobin", "nodes": nodes})
    expect_status(r, 201)
    g = d.must("GET", "upstreams/" + i)
    eq(len(g["value"]["nodes"]), len(nodes), "number of nodes stored")
    eq(g["value"]["nodes"], nodes, "nodes stored")
    expect_status(d.delete("upstreams/" + i), 200)


def test_deeply_nested_json_400(ctx):
    d = daemon(ctx)
    before = total(d, "routes")
    i = uid("deep")
    body = '{"uri":"/x","desc":' + "[" * 65 + "]" * 65 + "}"
    expect_error(d.put("routes/" + i, body), 400)
    # Very deep: must not crash the daemon.
    body = '{"uri":"/x","desc":' + "[" * 200000 + "]" * 200000 + "}"
    expect_error(d.put("routes/" + i, body), 400)
    body = '{"a":' * 100000 + "1" + "}" * 100000
    expect_error(d.put("routes/" + i, body), 400)
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)
    assert_alive_and_unchanged(d, "routes", before)


def test_non_object_body_400(ctx):
    d = daemon(ctx)
    before = total(d, "routes")
    i = uid("no")
    for raw in (b"[]", b'[{"uri":"/x"}]', b'"a string"', b"123", b"null", b"true"):
        expect_error(d.put("routes/" + i, raw), 400)
        expect_error(d.post("routes", raw), 400)
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)
    assert_alive_and_unchanged(d, "routes", before)


def test_empty_body_400(ctx):
    d = daemon(ctx)
    before = total(d, "routes")
    i = uid("eb")
    expect_error(d.put("routes/" + i), 400)
    expect_error(d.put("routes/" + i, b""), 400)
    expect_error(d.post("routes"), 400)
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)
    assert_alive_and_unchanged(d, "routes", before)


def test_unknown_collection_404(ctx):
    d = daemon(ctx)
    for method, path in (("GET", "foos"), ("GET", "foos/1"), ("PUT", "foos/1"),
                         ("DELETE", "foos/1"), ("GET", "/apisix/admin"),
                         ("GET", "/apisix/admin/"), ("GET", "/not/admin")):
        r = d.api(method, path, {"uri": "/x"} if method == "PUT" else None)
        expect_status(r, 404)
        check(r.is_json(), "%s: 404 body is not JSON" % r.where())


def test_unsupported_http_methods_405(ctx):
    d = daemon(ctx)
    i = uid("m")
    d.must("PUT", "routes/" + i, minimal("routes"), status=201)
    expect_status(d.api("TRACE", "routes/" + i), 405)
    expect_status(d.api("TRACE", "routes"), 405)
    expect_status(d.put("plugins/list", {"a": 1}), 405)
    expect_status(d.delete("plugins/list"), 405)
    expect_status(d.post("plugins/list", {"a": 1}), 405)
    expect_status(d.get("routes/" + i), 200)


def test_concurrent_posts_get_unique_ids_and_revisions(ctx):
    d = daemon(ctx)
    results = []
    lock = threading.Lock()

    def worker():
        r = d.post("upstreams", minimal("upstreams"))
        with lock:
            results.append(r)

    ts = [threading.Thread(target=worker) for _ in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for r in results:
        expect_status(r, 201)
    keys = [r.j["key"] for r in results]
    revs = [r.j["modifiedIndex"] for r in results]
    eq(len(set(keys)), 16, "distinct ids from 16 concurrent POSTs")
    eq(len(set(revs)), 16, "distinct revisions from 16 concurrent POSTs")
    for k in keys:
        expect_status(d.get(k.replace("/apisix/", "")), 200)


# ---------------------------------------------------------------------------
# plugins, schema validation, ssls


def test_plugins_list(ctx):
    d = daemon(ctx)
    r = d.get("plugins/list")
    expect_status(r, 200)
    lst = r.j
    check(isinstance(lst, list), "plugins/list is not an array: %r" % r.text[:200])
    for name in ("mqtt-proxy", "key-auth", "limit-count", "limit-req", "limit-conn",
                 "ip-restriction", "proxy-rewrite", "cors", "prometheus"):
        check(name in lst, "plugins/list lacks %s: %r" % (name, lst))


def test_plugin_schema(ctx):
    d = daemon(ctx)
    r = d.get("plugins/limit-count")
    expect_status(r, 200)
    s = r.j
    check(isinstance(s, dict), "schema is not an object")
    props = s.get("properties", {})
    check("count" in props and "time_window" in props,
          "limit-count schema lacks count/time_window properties: %r" % r.text[:300])
    for name in ("mqtt-proxy", "key-auth", "proxy-rewrite", "cors"):
        r = d.get("plugins/" + name)
        expect_status(r, 200)
        check(isinstance(r.j, dict), "%s schema is not an object" % name)
    r = d.get("plugins/no-such-plugin")
    expect_status(r, 404)
    check(r.is_json(), "404 body is not JSON")


def test_schema_validate(ctx):
    d = daemon(ctx)
    before = total(d, "routes")
    i = uid("sv")
    r = d.post("schema/validate/routes", dict(minimal("routes"), id=i))
    expect_status(r, 200)
    check(isinstance(r.j, dict) and "error_msg" not in r.j, "valid body: %r" % r.text[:200])
    r = d.post("schema/validate/routes", {"uri": 123})
    expect_error(r, 400, contains='property "uri" validation failed')
    r = d.post("schema/validate/upstreams", minimal("upstreams"))
    expect_status(r, 200)
    r = d.post("schema/validate/upstreams", {"type": "roundrobin", "nodes": {"a:1": "x"}})
    expect_error(r, 400)
    r = d.post("schema/validate/routes", dict(minimal("routes"), plugins={"foo": {}}))
    expect_error(r, 400, exact="unknown plugin [foo]")
    eq(total(d, "routes"), before, "routes total after schema validation")
    expect_json(d.get("routes/" + i), 404, NOT_FOUND)


def test_ssl_private_key_never_returned(ctx):
    d = daemon(ctx)
    i = uid("ssl")
    r = d.put("ssls/" + i, {"cert": TEST_CERT, "key": TEST_KEY, "snis": ["test.example.com"]})
    expect_status(r, 201)
    g = d.get("ssls/" + i)
    expect_status(g, 200)
    v = g.j["value"]
    check("key" not in v and "keys" not in v, "GET /ssls/%s returns the private key" % i)
    eq(v.get("cert"), TEST_CERT, "cert")
    eq(v.get("snis"), ["test.example.com"], "snis")
    check("PRIVATE KEY" not in g.text, "private key text in GET body")
    lst = d.get("ssls?page_size=500")
    expect_status(lst, 200)
    check("PRIVATE KEY" not in lst.text, "private key text in the ssl list")
    mine = [it for it in lst.j["list"] if it["key"] == "/apisix/ssls/" + i]
    eq(len(mine), 1, "ssl in list")
    check("key" not in mine[0]["value"] and "keys" not in mine[0]["value"],
          "list item has the private key")
    # With certs/keys arrays too.
    r = d.put("ssls/" + i, {"cert": TEST_CERT, "key": TEST_KEY, "certs": [TEST_CERT],
                            "keys": [TEST_KEY], "snis": ["test.example.com"]})
    expect_status(r, 200)
    g = d.get("ssls/" + i)
    check("key" not in g.j["value"] and "keys" not in g.j["value"],
          "GET returns key/keys after a PUT with keys")
    # A PATCH that does not touch the key keeps it (the ssl stays valid).
    r = d.patch("ssls/" + i, {"snis": ["test.example.com", "*.example.com"]})
    expect_status(r, 200)
    check("PRIVATE KEY" not in d.get("ssls/" + i).text, "private key after PATCH")


def test_ssl_cert_without_key_400(ctx):
    d = daemon(ctx)
    i = uid("sslbad")
    expect_status(d.put("ssls/" + i, {"cert": TEST_CERT, "snis": ["test.example.com"]}), 400)
    expect_json(d.get("ssls/" + i), 404, NOT_FOUND)


def test_delete_and_patch_without_id_400(ctx):
    # As APISIX: "missing <kind> id".
    d = daemon(ctx)
    before = total(d, "routes")
    expect_json(d.delete("routes"), 400, {"error_msg": "missing route id"})
    expect_json(d.patch("routes", {"name": "x"}), 400, {"error_msg": "missing route id"})
    expect_json(d.delete("upstreams"), 400, {"error_msg": "missing upstream id"})
    eq(total(d, "routes"), before, "routes total")


def test_slow_client_does_not_block_others(ctx):
    d = daemon(ctx)
    # A real curl uploading a 64 KiB body at 1 KiB/s (about a minute).
    body = json.dumps({"uri": "/slow", "desc": "s" * 65536})
    slow = subprocess.Popen(
        ["curl", "-sS", "--limit-rate", "1K", "-X", "PUT", "-H", "X-API-KEY: " + d.key,
         "-H", "Content-Type: application/json", "-H", "Expect:", "--data-binary", "@-",
         d.url("/apisix/admin/routes/slow-upload"), "-o", "/dev/null"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        slow.stdin.write(body.encode())
        slow.stdin.close()
        time.sleep(0.5)
        t0 = time.monotonic()
        for k in range(5):
            i = uid("fast")
            expect_status(d.put("upstreams/" + i, minimal("upstreams"), timeout=T(5)), 201)
            expect_status(d.get("upstreams/" + i, timeout=T(5)), 200)
        dt = time.monotonic() - t0
        check(dt < T(5), "10 requests took %.1fs while a slow client was uploading" % dt)
        check(slow.poll() is None, "the slow upload ended early (rc %s): the test proved "
              "nothing" % slow.returncode)
    finally:
        slow.kill()
        slow.wait()
    expect_json(d.get("/healthz", key=None), 200, {"status": "ok"})


def test_put_replaces_the_whole_value(ctx):
    d = daemon(ctx)
    i = uid("rep")
    d.must("PUT", "routes/" + i, dict(minimal("routes"), name="n", desc="d",
                                      labels={"a": "1"}), status=201)
    r = d.must("PUT", "routes/" + i, minimal("routes"), status=200)
    for k in ("name", "desc", "labels"):
        check(k not in r["value"], "PUT kept %r from the previous value (PUT is not a merge)" % k)
    g = d.must("GET", "routes/" + i)
    eq(g["value"], r["value"], "GET after replace")


def test_patch_cannot_change_id(ctx):
    d = daemon(ctx)
    i = uid("pid")
    c = d.must("PUT", "routes/" + i, minimal("routes"), status=201)
    expect_json(d.patch("routes/" + i, {"id": i + "-other"}), 400,
                {"error_msg": "wrong route id"})
    expect_json(d.get("routes/" + i + "-other"), 404, NOT_FOUND)
    eq(d.must("GET", "routes/" + i)["modifiedIndex"], c["modifiedIndex"], "modifiedIndex")


def test_consumer_username_must_match_path(ctx):
    # APISIX: PUT /consumers/jack with {"username":"rose"} is 400 ("wrong username").
    d = daemon(ctx)
    r = d.put("consumers/jack_m", {"username": "rose_m"})
    expect_error(r, 400)
    expect_json(d.get("consumers/jack_m"), 404, NOT_FOUND)
    expect_json(d.get("consumers/rose_m"), 404, NOT_FOUND)


def test_concurrent_puts_to_one_new_id(ctx):
    d = daemon(ctx)
    i = uid("race")
    results = []
    lock = threading.Lock()

    def worker(k):
        r = d.put("upstreams/" + i, upstream_conf({"127.0.0.1:%d" % (2000 + k): 1}))
        with lock:
            results.append(r)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    statuses = sorted(r.status for r in results)
    eq(statuses, [200] * 9 + [201], "statuses of 10 concurrent PUTs to one new id")
    created = {r.j["createdIndex"] for r in results}
    eq(len(created), 1, "createdIndex is the same in every response")
    last = max(results, key=lambda r: r.j["modifiedIndex"])
    g = d.must("GET", "upstreams/" + i)
    eq(g["value"]["nodes"], last.j["value"]["nodes"], "stored value is the last write's")
    eq(g["modifiedIndex"], last.j["modifiedIndex"], "modifiedIndex is the last write's")


def test_concurrent_patches_lose_no_acknowledged_update(ctx):
    d = daemon(ctx)
    i = uid("pp")
    d.must("PUT", "routes/" + i, minimal("routes"), status=201)
    results = []
    lock = threading.Lock()

    def worker(k):
        r = d.patch("routes/" + i, {"labels": {"k%d" % k: "v%d" % k}})
        with lock:
            results.append((k, r))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    labels = d.must("GET", "routes/" + i)["value"].get("labels", {})
    acked = [k for k, r in results if r.status == 200]
    check(acked, "no PATCH succeeded: %r" % [r for _, r in results][:2])
    lost = [k for k in acked if labels.get("k%d" % k) != "v%d" % k]
    check(not lost, "acknowledged PATCHes lost: labels %s missing from %r" % (
        ["k%d" % k for k in lost], labels))


def test_apisix_documentation_style_requests(ctx):
    # APISIX's docs send JSON with plain `-d` (curl then says
    # application/x-www-form-urlencoded) or with no Content-Type at all.
    d = daemon(ctx)
    i = uid("doc")
    body = ('{"uri": "/index.html", "upstream": {"type": "roundrobin", '
            '"nodes": {"127.0.0.1:1980": 1}}}')
    r = d.api("PUT", "routes/" + i, body, ctype=None)
    expect_status(r, 201)
    r = d.api("PUT", "routes/" + i, body, ctype="application/x-www-form-urlencoded")
    expect_status(r, 200)
    r = d.api("PUT", "routes/" + i, body, ctype="text/plain")
    expect_status(r, 200)
    r = d.api("PATCH", "routes/%s/upstream/nodes" % i, '{"127.0.0.1:1981": 1}', ctype=None)
    expect_status(r, 200)
    eq(r.j["value"]["upstream"]["nodes"], {"127.0.0.1:1981": 1}, "nodes after PATCH")
    r = d.api("POST", "upstreams", '{"type":"roundrobin","nodes":{"127.0.0.1:80":1}}',
              ctype=None)
    expect_status(r, 201)


def test_chunked_uploads(ctx):
    d = daemon(ctx)
    i = uid("chunk")
    r = d.put("upstreams/" + i, minimal("upstreams"), headers=["Transfer-Encoding: chunked"])
    expect_status(r, 201)
    eq(d.must("GET", "upstreams/" + i)["value"]["nodes"], minimal("upstreams")["nodes"], "nodes")
    # Over the limit without a Content-Length: still 413, nothing stored.
    nodes = big_nodes(1536 * 1024 + 4096)
    r = d.put("upstreams/" + i + "-big", {"type": "roundrobin", "nodes": nodes},
              headers=["Transfer-Encoding: chunked"])
    expect_error(r, 413)
    expect_json(d.get("upstreams/" + i + "-big"), 404, NOT_FOUND)
    expect_json(d.get("/healthz", key=None), 200, {"status": "ok"})


def test_unicode_round_trip(ctx):
    d = daemon(ctx)
    i = uid("utf")
    conf = dict(minimal("routes"), name="caf\u00e9-\u6d4b\u8bd5", desc="emoji \U0001F600 \"q\" \\ /",
                labels={"owner": "J\u00fcrgen"})
    r = d.put("routes/" + i, conf)
    expect_status(r, 201)
    g = d.must("GET", "routes/" + i)
    for k in ("name", "desc", "labels"):
        eq(g["value"][k], conf[k], "value.%s after a round trip" % k)
    b = d.must("GET", "routes?name=%s" % "caf%C3%A9")
    eq([it["key"] for it in b["list"] if it["key"] == "/apisix/routes/" + i],
       ["/apisix/routes/" + i], "name filter with a non-ASCII (percent-encoded) value")
