"""``python -m bandpo_train`` and ``accelerate launch -m bandpo_train`` run the CLI."""

from bandpo_train.cli import main

raise SystemExit(main())
