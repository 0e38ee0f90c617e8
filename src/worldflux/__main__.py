"""``python -m worldflux`` (and ``torchrun -m worldflux``): the `worldflux` command line."""

from worldflux.cli import main

main()
