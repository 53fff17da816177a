"""One module per intercepted runtime subcommand; each has run(inv, delegate, state_dir, problem)."""
