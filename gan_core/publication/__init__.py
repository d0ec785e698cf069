"""Versioned file sets on S3: publish (claims, upload, manifest last), read (list, resolve, download, verify),
retention (delete, keep the newest); s3 holds the client, names, URIs and errors they share."""
