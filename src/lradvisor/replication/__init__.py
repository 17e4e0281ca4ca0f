"""The paper's 23 experiments (``studies/E*.yaml``) and ``lradvisor reproduce``."""
