"""A simulated EV-charging lab that logs through MemoryBank, for `memorybank demo`."""
