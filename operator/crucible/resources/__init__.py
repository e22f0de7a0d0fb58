"""Pure builders: spec → manifests and status. Nothing here calls the Kubernetes API."""
