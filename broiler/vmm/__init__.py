"""Machine assembly: the platform's device list and the Machine that runs it."""
