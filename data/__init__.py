"""Data tooling for Parameter Golf: official-format shards, the hub downloader, corpus tokenization,
the dev set built from ../shared, and a byte-accounting check. Run each as `python -m data.<name>`."""
