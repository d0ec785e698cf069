"""Versioned file sets on S3: s3 (client, names, URIs, errors, the conditional-write probe), claim (one run per
version, under a lease), publish (stage, then commit), commit (the record that fixes a version's files, rolled
forward by any run), read (list, order, resolve, download, verify), retention (delete, keep the newest, pins)."""
