"""The pipeline's stages as plain functions: flows, the CLI and tests all call these.

One module per stage, each importing only what that stage runs, so that dvc.yaml's code
dependencies (each stage's import closure) rerun exactly the stages a change can affect.
"""
