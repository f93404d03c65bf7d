"""
Test certificates made with openssl(1) (EC P-256), once per test module.

  d = module_certs(ctx, "tls-certs",
                   ca("ca", "/CN=airgw e2e CA"),
                   server("a", "/CN=a.example.com", "DNS:a.example.com"),
                   client("dev", "/CN=device-1"))

writes, in a new directory of the run's tmp (made on the module's first call,
the same directory on later calls): NAME.key and NAME.crt for each of them
(and the CSRs, .ext files, CA serials). A CA is self-signed (10 years,
basicConstraints CA:TRUE, keyUsage keyCertSign, cRLSign); a server or client
certificate is signed by the CA named in `by` (1 year) with
extendedKeyUsage serverAuth (and the subjectAltName given) or clientAuth.
"""

import os
import subprocess

from harness import Fail, new_tmpdir

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def ca(name, subject):
    return ("ca", name, subject, None, None)


def server(name, subject, san, by="ca", eku="serverAuth"):
    return ("leaf", name, subject, "subjectAltName=%s\nextendedKeyUsage=%s\n" % (san, eku), by)


def client(name, subject, by="ca"):
    return ("leaf", name, subject, "extendedKeyUsage=clientAuth\n", by)


def _openssl(d, args):
    p = subprocess.run(["openssl"] + args, cwd=d, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise Fail("openssl %s failed: %s" % (" ".join(args[:2]),
                                              p.stderr.decode("utf-8", "replace")[-500:]))


def make(d, specs):
    """Makes the certificates of specs (ca/server/client tuples, CAs before
    what they sign) in directory d."""
    for kind, name, subject, ext, by in specs:
        if kind == "ca":
            _openssl(d, ["req", "-x509"] + EC + [
                "-keyout", name + ".key", "-out", name + ".crt", "-days", "3650",
                "-subj", subject, "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            continue
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write(ext)
        _openssl(d, ["req"] + EC + ["-keyout", name + ".key", "-out", name + ".csr",
                                    "-subj", subject])
        _openssl(d, ["x509", "-req", "-in", name + ".csr", "-CA", by + ".crt",
                     "-CAkey", by + ".key", "-CAcreateserial", "-out", name + ".crt",
                     "-days", "365", "-extfile", name + ".ext"])
    return d


def module_certs(ctx, prefix, *specs):
    """The module's certificate directory for prefix, made on first use."""
    made = ctx.mod.__dict__.setdefault("_certs_dirs", {})
    d = made.get(prefix)
    if d is None:
        d = made[prefix] = make(new_tmpdir(prefix), specs)
    return d


def path(d, name):
    return os.path.join(d, name)


def pem(d, name):
    with open(os.path.join(d, name)) as f:
        return f.read()
