"""bandpo_train."""
