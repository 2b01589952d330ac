"""tnbench core library: suites, data, networks, training, runner, records, reports."""
