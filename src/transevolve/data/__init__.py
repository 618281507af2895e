"""Real data: the fetchable package registry (:mod:`.packages`), the on-disk cache (:mod:`.cache`),
source-format readers (:mod:`.readers`) and batching helpers (:mod:`.batching`)."""
