"""Readers of the deployment files (Dockerfile, .dockerignore, dcos/, deploy/kubernetes/) shared
by the tests that hold them to the tree and to each other."""
