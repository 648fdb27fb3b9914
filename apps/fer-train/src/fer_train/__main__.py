"""``python -m fer_train`` and ``accelerate launch -m fer_train`` run the CLI."""

from fer_train.cli import main

raise SystemExit(main())
