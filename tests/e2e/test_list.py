"""Admin API lists: shape, pagination, filters."""

from harness import KINDS, check, eq, expect_error, expect_json, expect_status, upstream_conf

# Also run against a real etcd (run_all.py --store etcd).
STORES = ("sqlite", "etcd")

N = 25


def populated(ctx):
    """A daemon holding 25 routes r00..r24:
      name  "route-<i>" for even i, "other-<i>" for odd i
      labels {"env": "prod"} when i % 3 == 0, {"env": "dev"} when i % 3 == 1,
             {"team": "a"} otherwise
      uri   "/api/v1/items/<i>" for i < 20, else uris ["/mqtt/<i>", "/alt/<i>"]
    """
    d = ctx.shared("populated")
    if getattr(d, "populated", False):
        return d
    for i in range(N):
        conf = {"name": ("route-%d" if i % 2 == 0 else "other-%d") % i,
                "labels": [{"env": "prod"}, {"env": "dev"}, {"team": "a"}][i % 3],
                "upstream": upstream_conf()}
        if i < 20:
            conf["uri"] = "/api/v1/items/%d" % i
        else:
            conf["uris"] = ["/mqtt/%d" % i, "/alt/%d" % i]
        d.must("PUT", "routes/r%02d" % i, conf, status=201)
    d.populated = True
    return d


def ids_of(body):
    return sorted(it["value"]["id"] for it in body["list"])


def expected_ids(pred):
    return sorted("r%02d" % i for i in range(N) if pred(i))


def test_empty_collections(ctx):
    d = ctx.shared("empty")
    for coll in KINDS:
        expect_json(d.get(coll), 200, {"list": [], "total": 0})
        expect_json(d.get(coll + "?page=1&page_size=10"), 200, {"list": [], "total": 0})


def test_list_shape_and_total(ctx):
    d = populated(ctx)
    r = d.get("routes")
    expect_status(r, 200)
    b = r.j
    check(set(b) >= {"list", "total"}, "list body keys: %r" % sorted(b))
    eq(b["total"], N, "total")
    eq(len(b["list"]), N, "items without page arguments")
    for it in b["list"]:
        eq(sorted(it), ["createdIndex", "key", "modifiedIndex", "value"], "item members")
        eq(it["key"], "/apisix/routes/" + it["value"]["id"], "item key")
        check(isinstance(it["createdIndex"], int) and isinstance(it["modifiedIndex"], int),
              "item indexes are not integers")
        g = d.must("GET", "routes/" + it["value"]["id"])
        eq(it["value"], g["value"], "list item vs GET of " + it["key"])
        eq((it["createdIndex"], it["modifiedIndex"]), (g["createdIndex"], g["modifiedIndex"]),
           "list item indexes vs GET")
    eq(ids_of(b), expected_ids(lambda i: True), "ids in the list")


def test_pagination(ctx):
    d = populated(ctx)
    seen = []
    for page, size in ((1, 10), (2, 10), (3, 10)):
        b = d.must("GET", "routes?page=%d&page_size=%d" % (page, size))
        eq(b["total"], N, "total on page %d" % page)
        eq(len(b["list"]), [10, 10, 5][page - 1], "items on page %d" % page)
        seen += [it["value"]["id"] for it in b["list"]]
    eq(sorted(seen), expected_ids(lambda i: True), "pages together list every route once")
    b = d.must("GET", "routes?page=4&page_size=10")
    eq((b["list"], b["total"]), ([], N), "page past the end")
    b = d.must("GET", "routes?page=1&page_size=500")
    eq((len(b["list"]), b["total"]), (N, N), "page_size 500")
    # page alone uses a default page size (APISIX: 10).
    b = d.must("GET", "routes?page=1")
    eq(b["total"], N, "total with page only")
    check(len(b["list"]) <= N, "page=1 returned more items than exist")
    # Two identical page requests list the same items in the same order.
    a1 = d.must("GET", "routes?page=2&page_size=10")
    a2 = d.must("GET", "routes?page=2&page_size=10")
    eq([it["key"] for it in a1["list"]], [it["key"] for it in a2["list"]], "stable order")


def test_page_arguments_out_of_range_400(ctx):
    d = populated(ctx)
    for q in ("page_size=9", "page_size=501", "page_size=0", "page_size=-10", "page_size=abc",
              "page=0", "page=-1", "page=abc", "page=1&page_size=5000"):
        expect_error(d.get("routes?" + q), 400)
    for q in ("page_size=10", "page_size=500", "page=1&page_size=10"):
        expect_status(d.get("routes?" + q), 200)


def test_filter_name(ctx):
    d = populated(ctx)
    b = d.must("GET", "routes?name=route-")
    eq(b["total"], len(expected_ids(lambda i: i % 2 == 0)), "total for name=route-")
    eq(ids_of(b), expected_ids(lambda i: i % 2 == 0), "ids for name=route-")
    b = d.must("GET", "routes?name=ther-1")   # substring: other-1, 11, 13, 15, 17, 19
    eq(ids_of(b), ["r01", "r11", "r13", "r15", "r17", "r19"], "ids for name=ther-1")
    b = d.must("GET", "routes?name=nomatch")
    eq((b["list"], b["total"]), ([], 0), "name=nomatch")


def test_filter_label(ctx):
    d = populated(ctx)
    b = d.must("GET", "routes?label=env")
    eq(ids_of(b), expected_ids(lambda i: i % 3 in (0, 1)), "label=env")
    eq(b["total"], len(expected_ids(lambda i: i % 3 in (0, 1))), "total for label=env")
    b = d.must("GET", "routes?label=env:prod")
    eq(ids_of(b), expected_ids(lambda i: i % 3 == 0), "label=env:prod")
    b = d.must("GET", "routes?label=team:a")
    eq(ids_of(b), expected_ids(lambda i: i % 3 == 2), "label=team:a")
    b = d.must("GET", "routes?label=env:staging")
    eq((b["list"], b["total"]), ([], 0), "label=env:staging")


def test_filter_uri(ctx):
    d = populated(ctx)
    b = d.must("GET", "routes?uri=/items/1")  # items/1, 10..19
    eq(ids_of(b), expected_ids(lambda i: i == 1 or 10 <= i < 20), "uri=/items/1")
    b = d.must("GET", "routes?uri=/alt/2")  # matched through uris
    eq(ids_of(b), expected_ids(lambda i: i >= 20), "uri=/alt/2 (in uris)")
    b = d.must("GET", "routes?uri=/mqtt/24")
    eq(ids_of(b), ["r24"], "uri=/mqtt/24")


def test_filters_combined_with_pagination(ctx):
    d = populated(ctx)
    want = expected_ids(lambda i: i % 2 == 0 and i % 3 == 0)  # 0, 6, 12, 18, 24
    b = d.must("GET", "routes?name=route-&label=env:prod")
    eq(ids_of(b), want, "name=route-&label=env:prod")
    eq(b["total"], len(want), "total for name+label")
    want = expected_ids(lambda i: i % 2 == 0)  # 13 routes
    b1 = d.must("GET", "routes?name=route-&page=1&page_size=10")
    b2 = d.must("GET", "routes?name=route-&page=2&page_size=10")
    eq((b1["total"], b2["total"]), (len(want), len(want)), "filtered total on each page")
    eq((len(b1["list"]), len(b2["list"])), (10, len(want) - 10), "filtered page sizes")
    eq(sorted(ids_of(b1) + ids_of(b2)), want, "filtered pages together")


def test_list_other_collections(ctx):
    d = ctx.shared("empty")
    d.must("PUT", "upstreams/u1", upstream_conf(), status=201)
    d.must("PUT", "upstreams/u2", dict(upstream_conf(), name="second"), status=201)
    b = d.must("GET", "upstreams")
    eq(b["total"], 2, "upstreams total")
    eq(sorted(it["key"] for it in b["list"]), ["/apisix/upstreams/u1", "/apisix/upstreams/u2"],
       "upstream keys")
    b = d.must("GET", "upstreams?name=sec")
    eq([it["key"] for it in b["list"]], ["/apisix/upstreams/u2"], "upstreams?name=sec")
    # Other collections are not mixed in.
    expect_json(d.get("routes"), 200, {"list": [], "total": 0})
    expect_json(d.get("services"), 200, {"list": [], "total": 0})
    d.must("DELETE", "upstreams/u1", status=200)
    d.must("DELETE", "upstreams/u2", status=200)
    expect_json(d.get("upstreams"), 200, {"list": [], "total": 0})
