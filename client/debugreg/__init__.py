"""Client library for debugregd."""
