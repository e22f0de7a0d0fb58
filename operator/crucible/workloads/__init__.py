"""What runs inside the workload images: each module is a command-line entrypoint that reads
its task (crucible.api.contract) and reports back by its termination message, and while it runs
by pushes to the operator's report endpoint."""
