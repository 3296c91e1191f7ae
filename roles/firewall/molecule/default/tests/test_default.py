"""ufw on every host: active, at boot, default deny inbound, the model's rules tagged as the role's own."""

PREFIX = "ai-platform: "


def rules(host):
    """The added rules, in ufw's own command syntax."""
    return [line for line in host.check_output("ufw show added").splitlines() if line.startswith("ufw ")]


def test_ufw_active_and_enabled_at_boot(host):
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "Default: deny (incoming), allow (outgoing)" in status
    assert "ENABLED=yes" in host.file("/etc/ufw/ufw.conf").content_string
    assert host.service("ufw").is_enabled


def test_ssh_only_from_admin_network_and_limited(host):
    assert "ufw limit from 10.90.7.0/28 to any port 22 proto tcp comment 'ai-platform: ssh'" in rules(host)
    assert not [r for r in rules(host) if "port 22 " in r and "10.90.7.0/28" not in r]


def test_rules_per_host(host):
    got = {r for r in rules(host) if PREFIX in r}
    name = host.backend.get_hostname()
    expected = {"ufw limit from 10.90.7.0/28 to any port 22 proto tcp comment 'ai-platform: ssh'"}
    if name == "firewall-db":
        expected |= {
            f"ufw allow from 10.90.7.21 to any port {port} proto tcp comment 'ai-platform: {what}'"
            for port, what in (("5432", "postgresql"), ("6379", "redis-broker"), ("6380", "redis-cache"))
        }
        # The database and Redis hosts of the model are sources too (replication, Patroni's
        # REST API between members); this scenario has one database/Redis host: itself.
        expected |= {
            f"ufw allow from 10.90.7.31 to any port {port} proto tcp comment 'ai-platform: {what}'"
            for port, what in (
                ("5432", "postgresql"), ("8008", "patroni"), ("6379", "redis-broker"), ("6380", "redis-cache"),
            )
        }
        expected.add("ufw allow from 10.90.7.21 to any port 514 proto udp comment 'ai-platform: syslog'")
    elif name == "firewall-app":
        expected.add("ufw allow from 10.90.7.10 to any port 8000 proto tcp comment 'ai-platform: app'")
    elif name == "firewall-lb":
        # VRRP from the lb group: this scenario has one load balancer, itself.
        expected |= {"ufw allow 80/tcp comment 'ai-platform: http'", "ufw allow 443/tcp comment 'ai-platform: https'",
                     "ufw allow from 10.90.7.10 proto vrrp comment 'ai-platform: vrrp'"}
    assert got == expected


def test_foreign_rule_kept_and_stale_own_rule_removed(host):
    if host.backend.get_hostname() != "firewall-db":
        return
    added = rules(host)
    assert "ufw allow from 10.90.7.10 to any port 9999 proto tcp comment 'operator: manual'" in added
    assert not [r for r in added if "7777" in r]
