"""Performance figures of ganforge, each a ratio measured side by side in one run (`make bench`); `--quick` runs
every suite at tiny sizes, as `make test` does (tests/test_benchmarks.py)."""
