"""The project CA is trusted on the host and the host certificate chains to it."""

CRT = "/etc/ai-platform/tls/testsvc.crt"
KEY = "/etc/ai-platform/tls/testsvc.key"


def test_ca_installed_and_trusted(host):
    ca = host.file("/etc/ai-platform/tls/ca.crt")
    assert ca.exists and ca.mode == 0o644
    text = host.check_output("openssl x509 -in /etc/ai-platform/tls/ca.crt -noout -text")
    assert "CA:TRUE" in text and "Certificate Sign" in text
    # In the system bundle: a plain `openssl verify` (no -CAfile) accepts the host certificate.
    assert host.run(f"openssl verify {CRT}").rc == 0


def test_host_certificate(host):
    out = host.check_output(f"openssl verify -CAfile /etc/ai-platform/tls/ca.crt {CRT}")
    assert out.endswith("OK")
    text = host.check_output(f"openssl x509 -in {CRT} -noout -text")
    assert "DNS:pki-d12" in text
    assert "IP Address:10.90.9.12" in text
    assert "TLS Web Server Authentication" in text


def test_certificate_not_due_for_renewal(host):
    # side_effect.yml had put in a certificate expiring in five days; the role renewed it.
    # pki_cert_renew_days is 30: the installed one must outlast that, with its full validity.
    assert host.run(f"openssl x509 -in {CRT} -noout -checkend {31 * 86400}").rc == 0
    assert host.run(f"openssl x509 -in {CRT} -noout -checkend {360 * 86400}").rc == 0


def test_key_private_and_matching(host):
    key = host.file(KEY)
    assert key.user == "root" and key.group == "daemon" and key.mode == 0o640
    pub_key = host.check_output(f"openssl pkey -in {KEY} -pubout")
    pub_crt = host.check_output(f"openssl x509 -in {CRT} -noout -pubkey")
    assert pub_key == pub_crt


def test_tls_handshake_with_ca(host):
    # A real TLS server with the certificate, and a client that only trusts the system store.
    host.run(f"systemd-run --unit=pki-test-server openssl s_server -accept 8443 -cert {CRT} -key {KEY} -www -quiet")
    try:
        out = host.run(
            "for i in $(seq 50); do echo | openssl s_client -connect 127.0.0.1:8443 -servername pki-d12"
            " -verify_hostname pki-d12 -verify_return_error 2>&1 && break; sleep 0.1; done")
        assert "Verify return code: 0 (ok)" in out.stdout
    finally:
        host.run("systemctl stop pki-test-server")
