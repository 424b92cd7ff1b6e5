"""Data in: sources, the prepared Parquet shards, the clients' partition, and the one image dataset type."""
