"""ganforge library: two kinds of data (images/, tables/) through one pipeline (stages/), publication and registry on S3.

The library API, no S3, DVC or Prefect needed: `TableSynthesizer().fit(df).sample(100)`, and
`ImageSynthesizer(epochs=...).fit(images, labels).sample(100)`; `save(path)` / `load(path)` a model folder.
"""

# Re-exported lazily: `import gan_core` stays free of torch and boto3, and each name imports only its own module.
_LAZY = {"load_dataframe": "gan_core.loader", "SyntheticImageDataset": "gan_core.loader",
         "ImageSynthesizer": "gan_core.images.synthesizer", "TableSynthesizer": "gan_core.tables.synthesizer"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gan_core' has no attribute {name!r}")
