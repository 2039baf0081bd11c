"""``python -m circuit.mutants --model M [--spec S] [--out FILE]``: mutation testing of the claims."""

from circuit.mutants.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
