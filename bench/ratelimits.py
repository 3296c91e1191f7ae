"""ratelimits: requests sent faster than Nginx's limits, from one client."""
from __future__ import annotations

import json
import time

from bench.lab import Lab, log, on, remote_script
from bench.report import Row

NAME = "ratelimits"


def measure(lab: Lab) -> dict:
    """Requests sent faster than the limit from one client: the accepted count
    (anything but 429) against burst + rate x time."""
    lb = lab.addr[lab.lb]
    hv = lab.hostvars[lab.lb]
    api_rate = float(str(hv.get("nginx_api_rate", "10r/s")).rstrip("r/s"))
    api_burst = int(hv.get("nginx_api_burst", 20))
    up_rate = float(str(hv.get("nginx_upload_rate", "1r/s")).rstrip("r/s"))
    up_burst = int(hv.get("nginx_upload_burst", 5))
    on(lab.client, f"cat > /tmp/ratecheck.py <<'PY'\n{remote_script('ratecheck.py')}\nPY")
    out = {}
    for name, url, method, rate, burst, send in [
        ("api", f"https://{lb}:443/api/v1/auth/me", "GET", api_rate, api_burst, api_rate * 5),
        ("upload", f"https://{lb}:443/api/v1/projects/00000000-0000-0000-0000-000000000000/documents", "POST",
         up_rate, up_burst, up_rate * 10),
    ]:
        time.sleep(burst / rate + 2)  # let the bucket drain from earlier requests
        r = json.loads(on(lab.client, f"python3 /tmp/ratecheck.py '{url}' {send} {lab.args.seconds} {method}"))
        accepted = sum(v for k, v in r["statuses"].items() if k != "429")
        expected = burst + rate * r["sent_for_s"]
        out[name] = {"sent": r["sent"], "statuses": r["statuses"], "accepted": accepted,
                     "expected": round(expected, 1), "accepted_vs_expected": accepted / expected,
                     "only_429_beyond": set(r["statuses"]) <= {"429", "401", "404", "422"}}
        log(f"ratelimits {name}: {accepted} accepted of {r['sent']}, expected {expected:.1f}; {r['statuses']}")
    return out


def rows(res: dict) -> list[Row]:
    return [Row(f"rate limit `{k}`: accepted vs burst + rate × time; every other answer 429", "within 10 % (0.9-1.1); only 429 beyond",
                f"{v['accepted']} / {v['expected']} = {v['accepted_vs_expected']:.2f}; statuses {v['statuses']}",
                0.9 <= v["accepted_vs_expected"] <= 1.1 and v["only_429_beyond"])
            for k, v in res.get(NAME, {}).items()]
