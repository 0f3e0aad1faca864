"""Where a study lives: local, file:// and s3:// storage with atomic writes (``storage``) and the one-driver study lock (``lock``)."""
