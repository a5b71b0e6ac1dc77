"""Running the graph: the home, the Dagster instance, deployments, the commands behind the CLI."""
