"""``python -m lradvisor``: the same command line as ``lradvisor``."""

from lradvisor.cli import main

if __name__ == "__main__":
    main(prog_name="lradvisor")
