# The two commands of README.md, and the pieces they are made of.
.PHONY: demo test unit setup images lint crds

demo: setup images  ## the main job: the quickstart recipe on the local cluster
	.venv/bin/crucible dev up

test: setup images lint  ## everything CI runs
	.venv/bin/pytest

unit: setup  ## the fast tier: every controller on the in-memory API server, builders, types
	.venv/bin/pytest tests/unit

setup:
	hack/setup.sh

images: setup  ## every image, built with buildah and pushed to the local registry
	.venv/bin/crucible dev images

lint:
	.venv/bin/ruff check operator tests
	.venv/bin/ruff format --check operator tests
	.venv/bin/mypy

crds: setup  ## regenerate crds/ from the API types
	.venv/bin/crucible crds
