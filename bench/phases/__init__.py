"""The bench's phases, one module each; each takes the run's `Bench` and returns the
JSON-ready figures that go into the result file under its name."""
