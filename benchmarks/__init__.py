"""Benchmarks for gloomd and the job servers people would pick instead.

The load generator (`benchmarks.loadgen`) drives gloomd, gearmand and
beanstalkd with the same workloads; `benchmarks/peers.sh` runs them side by
side and `benchmarks.compare` renders the table.  See benchmarks/README.md.
"""
