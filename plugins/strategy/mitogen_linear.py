# Mitogen for Ansible's linear strategy, from the mitogen package that requirements.txt
# pins: ansible.cfg names it (strategy = mitogen_linear) and finds it here
# (strategy_plugins = plugins/strategy), wherever the venv is. Mitogen runs one Python
# interpreter per host over the SSH connection Ansible would open and keeps it between
# tasks, so a task does not start a new interpreter and re-import its modules on the host.
# Back to plain SSH for one run: ANSIBLE_STRATEGY=linear ansible-playbook ...
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
