"""One module per group of `psystats` commands; see psystats/cli.py."""
