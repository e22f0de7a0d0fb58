"""What runs inside the workload images: each module is a command-line entrypoint that reads
its task (crucible.api.contract) and reports back through the run's report ConfigMap."""
