"""Performance figures of ganforge, each a ratio measured side by side in one run (`make bench`)."""
