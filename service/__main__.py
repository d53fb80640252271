"""``python -m service`` is ``consumergen``."""

from service.cli import main

main()
