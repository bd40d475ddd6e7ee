"""``python -m ragsam``: the same command line as the ``ragsam`` console script."""

from ragsam.cli.main import main

if __name__ == "__main__":
    main()
