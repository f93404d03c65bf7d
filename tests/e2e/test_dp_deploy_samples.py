"""The sample configuration files in deploy/ start the daemons they are for.

Addresses and paths in the samples are rewritten to free loopback ports and a temp
dir; everything else is used as written, so a sample that stops matching the
settings parser (an unknown or renamed key, a bad value) fails here.
"""
import os
import re

from harness import check, free_port, new_tmpdir
from dp_harness import new_dp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sample(name):
    with open(os.path.join(ROOT, "deploy", name)) as f:
        return f.read()


def localize(text, tmp):
    """/var/lib/airgw -> tmp; every ADDR:PORT -> 127.0.0.1:<free port>."""
    text = text.replace("/var/lib/airgw", tmp)
    return re.sub(r"\b(?:0\.0\.0\.0|127\.0\.0\.1):\d+\b",
                  lambda m: "127.0.0.1:%d" % free_port(), text)


def test_controlplane_sample_starts(ctx):
    tmp = new_tmpdir("deploy")
    cp = ctx.daemon(config=localize(sample("controlplane.yaml"), tmp), state_dir=None)
    r = cp.must("PUT", "upstreams/1", {"nodes": {"127.0.0.1:1980": 1}})
    check(r["key"] == "/apisix/upstreams/1", "the sample's control plane stores writes")
    check(os.path.exists(os.path.join(tmp, "airgw.db")), "store at the sample's path")


def test_dataplane_sample_starts(ctx):
    tmp = new_tmpdir("deploy")
    cp = ctx.shared()
    text = localize(sample("dataplane.yaml"), tmp)
    d = new_dp(ctx, cp=cp, config=text, workers=1)
    d.wait_log(r"stream \(tls\) listening on 127\.0\.0\.1:\d+", what="TLS stream listener")
    d.wait_log(r"https listening on 127\.0\.0\.1:\d+", what="https listener")
    check("unknown key" not in d.stderr(), "no unknown key in the sample")


def test_standalone_sample_loads(ctx):
    d = new_dp(ctx, standalone=os.path.join(ROOT, "deploy", "apisix.yaml"), workers=1)
    d.wait_log(r"standalone: loaded .*apisix\.yaml .*4 resources", what="sample loaded")
