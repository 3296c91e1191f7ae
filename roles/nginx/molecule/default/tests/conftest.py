"""Shared helpers: the client talks to the site by name, trusting only the exported project CA."""

import os
import shlex

import pytest
import testinfra

LB = "10.90.6.10"
NAME = "api.lab.example"
BASE = f"https://{NAME}"
CA = "/tmp/nginx-ca.crt"
UPLOAD = "/api/v1/projects/0b0e7f4c-5d1e-4c6a-9a53-2d4d1f0f9a11/documents"


def lab_host(name):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="session")
def client():
    """nginx-client with the CA the role exported to the control node (nginx_tls_ca_export_path)."""
    exported = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "nginx-ca.crt")
    with open(exported) as f:
        ca = f.read()
    c = lab_host("nginx-client")
    c.run(f"printf '%s' {shlex.quote(ca)} > {CA}")
    return c


def curl(client, *args, path="/", base=BASE):
    """curl through TLS to the site by name (resolved to the load balancer), CA checked."""
    cmd = ["curl", "-sS", "--resolve", f"{NAME}:443:{LB}", "--resolve", f"{NAME}:80:{LB}", "--cacert", CA,
           *args, base + path]
    return client.run(" ".join(shlex.quote(a) for a in cmd))
