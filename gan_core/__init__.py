"""ganforge library: two kinds of data (images/, tables/) through one pipeline (stages/), publication and registry on S3."""

# The loader is re-exported lazily: `import gan_core` stays free of torch and boto3.
_LAZY = {"load_dataframe": "gan_core.loader", "SyntheticImageDataset": "gan_core.loader"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gan_core' has no attribute {name!r}")
