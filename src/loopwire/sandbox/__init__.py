"""Local emulators of the Amplitude, Segment and Customer.io APIs, for demos, tests and staging checks."""
