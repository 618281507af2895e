"""Real data for the tasks.

- :mod:`.cache`: the data root (``$TRANSEVOLVE_DATA`` or ``~/.cache/transevolve``).
- :mod:`.packages`: registry of fetchable data packages, atomic verified ``fetch``, checked file access.
- :mod:`.readers`: validated readers of the source formats (IDX, CSV, R lazy-load DB, help HTML, SWORD).
- :mod:`.datasets`: deterministic splits, byte-level text, compact image datasets, processed caches.
- :mod:`.subword` / :mod:`.translation`: joint sentencepiece vocabulary and the translation-task recipe.
- :mod:`.batching`: padding masks and the token-budget batch sampler.
- :mod:`.cli`: ``transevolve data list | fetch | info``.
"""
