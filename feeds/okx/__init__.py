"""OKX v5 public order books (``books`` channel): parser, sync, checksum, adapter."""
