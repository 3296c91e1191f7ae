"""The benchmark sections. Each is a module with NAME, measure(lab) -> dict (its part of
results.json), rows(results) -> the table's rows it owns (from the whole results, so a row
may compare with another section's numbers), and optionally options(argparse parser).
A section that fills its results as it goes can be measure(lab, out) under
@bench.lab.keeps_partial: what it measured before a failure is still written.
A new section: its module, then its place in RUN and TABLE below."""
from __future__ import annotations

from bench import converge, database, deploy, failover, indexing, memory, pitr, ratelimits, release, serving

# A whole `make bench`, in this order: converge boots the lab fresh and leaves it deployed;
# memory comes after the sections that warm the services up.
RUN = [converge, serving, ratelimits, failover, pitr, memory, deploy, release, indexing, database]
# The order of the results table.
TABLE = [serving, ratelimits, converge, deploy, release, memory, database, failover, pitr, indexing]
BY_NAME = {s.NAME: s for s in RUN}
