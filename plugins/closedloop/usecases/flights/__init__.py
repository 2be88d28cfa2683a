"""Real flights out of New York City in 2013, replayed as daily batches."""
