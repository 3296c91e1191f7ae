# The two commands of the README, and a few more for everyday work.
.PHONY: lab test bench drills down lint molecule app-test status help

help:
	@echo "make lab    - boot the lab (real systemd hosts) and deploy the whole stack with site.yml"
	@echo "make test   - run every test (lint, app, Molecule scenarios) and print timings"
	@echo "make bench  - deploy the lab, run the benchmarks, write docs/bench/results.{json,md}"
	@echo "make drills - deploy the lab, run the fault drills and security checks (docs/bench/drills.md)"
	@echo "make down   - remove the lab (hosts, engine, namespace); caches stay"
	@echo "make lint   - yamllint + ansible-lint (production profile)"
	@echo "make molecule S=common - one Molecule scenario (ROLE or ROLE/SCENARIO)"

lab:
	bash tests/lab/deploy.sh

test:
	bash tests/run-all.sh

bench:
	bash bench/run.sh

drills:
	bash bench/drills.sh

down:
	python3 tests/lab/lab.py down

status:
	python3 tests/lab/lab.py status

lint:
	AIPL_STAGES="bootstrap lint" bash tests/run-all.sh

molecule:
	bash tests/bootstrap.sh && bash tests/molecule.sh $(S)

app-test:
	bash tests/run-app-tests.sh
