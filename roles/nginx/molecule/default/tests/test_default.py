"""On the load balancer: nginx installed, running, configured by the role, key private."""

import pytest

testinfra_hosts = ["nginx-lb"]


def test_nginx_running_and_enabled(host):
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled
    assert host.run("nginx -t -q").rc == 0


def test_workers_have_enough_open_files(host):
    worker = host.check_output("pgrep -u www-data -o nginx")
    limits = host.file(f"/proc/{worker}/limits").content_string
    soft = next(line.split()[3] for line in limits.splitlines() if line.startswith("Max open files"))
    assert int(soft) >= 8192  # 2 x worker_connections
    assert "exceed open file resource limit" not in host.run("journalctl -u nginx --no-pager -q; "
                                                             "tail -n 50 /var/log/nginx/error.log").stdout


def test_files(host):
    conf = host.file("/etc/nginx/conf.d/ai-platform.conf")
    assert conf.user == "root" and conf.mode == 0o644
    assert "server 10.90.6.21:8000 max_fails=3 fail_timeout=10s;" in conf.content_string
    assert "server 10.90.6.22:8000 max_fails=3 fail_timeout=10s;" in conf.content_string
    assert "least_conn;" in conf.content_string
    key = host.file("/etc/ai-platform/tls/nginx.key")
    assert key.user == "root" and key.mode == 0o600
    # No backups left behind by the validated write.
    assert host.run("ls /etc/nginx/conf.d /etc/nginx | grep -c '~$'").stdout.strip() == "0"


def test_certificate_from_project_ca(host):
    assert host.run("openssl verify -CAfile /etc/ai-platform/tls/ca.crt /etc/ai-platform/tls/nginx.crt").rc == 0
    text = host.check_output("openssl x509 -in /etc/ai-platform/tls/nginx.crt -noout -ext subjectAltName")
    assert "DNS:api.lab.example" in text and "IP Address:10.90.6.10" in text


@pytest.mark.parametrize("port", [80, 443])
def test_listening(host, port):
    assert host.socket(f"tcp://0.0.0.0:{port}").is_listening
