"""`python -m chainer` is the `chainer` command."""

from .cli import main

main()
