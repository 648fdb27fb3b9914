def test_where():
    import rl_trainer.rollout as r

    print("\nFILE", r.__file__)
