"""Command-line tools and developer aids: the CLI, the demo, the simulator, the embedded broker,
test helpers."""
