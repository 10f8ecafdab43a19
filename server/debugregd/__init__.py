"""debugregd: an arbitration daemon for CPU hardware debug registers."""

__version__ = "0.1.0"
