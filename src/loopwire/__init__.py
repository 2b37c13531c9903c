"""loopwire: a self-hosted retention data bridge between Customer.io, Amplitude and Segment."""

__version__ = "0.1.0"
