"""The demo: a use case's scenario replayed day by day through the platform, and its
driver. Nothing in the library or the platform imports it."""
